"""Test support: tiny random-init models of every family and the tools that exercise them.

Nothing the lm-eval model (`hf-modarb`) or the analyses load at run time lives here.
"""
