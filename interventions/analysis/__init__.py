"""Analyses of modality arbitration: identify the heads, trace the flow, reproduce the paper."""
