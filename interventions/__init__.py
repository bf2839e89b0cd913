"""interventions: what modarb does to a model.

Subpackages, each importing only the ones above it in this list:
  mechanism/  locate heads, scale them, knock out attention, the JSON spec (torch only; no lm-eval, no CLI)
  families/   one record per model family: where its decoder is, its image token, its processor quirks
  model/      the lm-eval model `hf-modarb`, model and processor loading, the scoped request cache
  organism/   the bundled model organism (weights, card, training recipe)
  analysis/   identify the arbitration heads, trace the information flow, reproduce the paper
  cli/        the `modarb` command: argument parsing, with each subcommand's work imported on use
  testing/    test support: tiny random-init models of every family (never loaded by hf-modarb)
"""
