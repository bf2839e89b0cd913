"""interventions: what modarb does to a model — locate heads, scale them, knock out attention,
identify arbitration heads, trace the information flow; plus the lm-eval model and the CLI."""
