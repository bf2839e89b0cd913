"""interventions: what modarb does to a model.

Its subpackages form layers, each importing only from the layers before it in LAYERS (below),
and from modarb_tasks; tests/test_layers.py checks every pair in fresh interpreters:
  base        the package, families/ (one record per model family: where its decoder is, its image
              token, its processor quirks) and organism/'s package module (where the bundled
              weights are, nothing else)
  mechanism/  locate heads, scale them, knock out attention, the JSON spec (torch only; no lm-eval, no CLI)
  model/      the lm-eval model `hf-modarb`, model and processor loading, the scoped request cache
  organism.*  the bundled model organism's recipe, tokenizer, card and scoring (its training reads model/)
  analysis/   identify the arbitration heads, trace the information flow, reproduce the paper
  cli/        the `modarb` command: argument parsing, with each subcommand's work imported on use
  testing/    test support: tiny random-init models of every family (never loaded by hf-modarb)
"""

# The layer order, lowest first. A name stands for that module and every module under it, "x.*" for
# the modules under x only; where names overlap the longest decides. So the organism package module,
# which run-time code (mechanism/spec.py, model/) reads for the weights' location, is base, while
# its submodules, which train and score the organism through model/, sit above model/.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("interventions", "interventions.families", "interventions.organism")),
    ("mechanism", ("interventions.mechanism",)),
    ("model", ("interventions.model",)),
    ("organism", ("interventions.organism.*",)),
    ("analysis", ("interventions.analysis",)),
    ("cli", ("interventions.cli", "interventions.__main__")),
    ("testing", ("interventions.testing",)),
)
