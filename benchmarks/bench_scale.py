"""What `modarb reproduce` costs at 7B, as counted decoder work converted to H100 time.

Work is hardware-independent: forwards and decoder layer-tokens (layer calls x tokens), counted
with hooks on the decoder's attention modules (`plan.WorkCounter`), so the numbers are stable on a
loaded machine. H100 minutes = layer-tokens x 1.16 us (`plan.H100_SECONDS_PER_LAYER_TOKEN`: LLaVA-1.5-7B,
bf16, an exact sweep of 1,025 passes of 4 x 695 tokens x 32 layers in 106 s on one H100); a
backward counts as two forwards. The exact sweeps and flow's knockouts run resumed forwards
(`interventions.mechanism.resume`: only the layers from the intervened one on), counted and planned as such.

- counted: the organism and a wider random-init organism (8 layers x 12 heads, above the
  shortlist threshold) run flow, the logit lens, identify and the amplification fit for real on
  the reproduce defaults' shapes docs; each count is printed beside the plan's (`plan.py`).
- planned: Qwen2.5-VL-7B's layout (28 layers x 28 heads) and LLaVA-1.5-7B's (32 x 32) at the
  prompt lengths their processors give a COCO image with an MC² prompt: Qwen2.5-VL 391 image
  tokens (640 x 480 at 28-pixel merged patches) + 159 text = 550; LLaVA-1.5 576 + 119 = 695.
  Flow's knockouts into a text group are planned as recomputing all the text (an upper bound: the
  text before the image is counted too), those into the last position as recomputing one token.
  Counting them for real would take hours on two CPU cores; the plan's counts are validated on the
  counted models (and in tests/analysis/test_plan.py).
- lm-eval's runs are planned everywhere (each run scores every task's prompts once).

`--exact-sweep full` gives the exact sweeps over every head (main's behaviour before shortlists).

    python benchmarks/bench_scale.py [--exact-sweep shortlist|full] [--skip-counted] [--out results.json]
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from interventions.analysis.defaults import LearnedMaskOptions, ReproduceConfig  # noqa: E402
from interventions.analysis.plan import (  # noqa: E402
    H100_SECONDS_PER_LAYER_TOKEN,
    LM_EVAL_TASKS,
    FlowBatch,
    Phase,
    WorkCounter,
    Workload,
    batch_tokens,
    shapes_workload,
    reproduce_plan,
    table,
    totals,
)

LAYOUTS_7B = {  # name -> (layers, heads, prompt tokens with a COCO image, of which text)
    "qwen2.5-vl-7b": (28, 28, 550, 159),
    "llava-1.5-7b": (32, 32, 695, 119),
}
# flow's runnable edges per prompt layout, as flow_sweep finds them on shapes and MC² docs:
# (edges into a text group: instruction, context, constraint; edges into the last position)
FLOW_EDGES = {"standard": (6, 3), "instruction_after": (5, 3), "system_prompt": (6, 3)}
IDENTIFY_PHASES = ("attribution", "objective (open model)", "learned mask", "ablation sweep", "selective sweep",
                   "objective at each top set", "gate response")


def planned_workload(config: ReproduceConfig, tokens: int, text: int) -> Workload:
    """Every doc `tokens` long (`text` of them text), as many docs as the defaults' shapes / MC² analyses take."""
    rows = 2 * config.analysis_items  # two follow kinds (or two control kinds)
    bs = config.batch_size
    flow = [FlowBatch(batch, (batch // tokens * text,) * into_text + (batch // tokens,) * into_last)
            for into_text, into_last in FLOW_EDGES.values() for _side in ("image", "text")
            for batch in batch_tokens(config.analysis_items, tokens, bs)]
    return Workload(identify_follow=batch_tokens(rows, tokens, bs), identify_control=batch_tokens(rows, tokens, bs),
                    flow=flow, lens=batch_tokens(rows * len(FLOW_EDGES), tokens, bs),
                    amplify_follow=batch_tokens(2 * config.amplify_items, tokens, bs),
                    amplify_control=batch_tokens(2 * config.amplify_items, tokens, bs),
                    amplify_rows=(batch_tokens(2 * config.amplify_items, 1, bs),) * 2,
                    lm_eval=batch_tokens(LM_EVAL_TASKS * config.limit, tokens, bs))


def counted_phases(model, processor, config: ReproduceConfig, exact_sweep: str) -> tuple[list[Phase], dict]:
    """Run reproduce's analyses on `model` with hooks counting; (phases, CPU seconds per phase)."""
    from interventions.analysis.amplify import choose_alpha, learn_amplification
    from interventions.analysis.batches import iter_batches
    from interventions.analysis.flow import flow_sweep
    from interventions.analysis.data import FOLLOW_KINDS, shapes_docs
    from interventions.analysis.identify import frozen, identify, split_docs, top_heads
    from interventions.analysis.lens import logit_lens
    from interventions.analysis.objective import Objective
    from interventions.analysis.defaults import DEFAULT_LAYOUTS

    bs, seconds = config.batch_size, {}
    flow_docs = shapes_docs(config.analysis_items, FOLLOW_KINDS, layouts=DEFAULT_LAYOUTS)
    with WorkCounter(model) as counter:
        @contextmanager
        def timed(name):
            start = time.perf_counter()
            with counter.phase(name):
                yield
            seconds[name] = round(time.perf_counter() - start, 1)

        with timed("flow knockouts"):
            flow_sweep(model, processor, flow_docs, window=config.window, batch_size=bs)
        with timed("logit lens"):
            logit_lens(model, processor, flow_docs, batch_size=bs, progress=False)
        with timed("identify"):
            result = identify(model, processor, shapes_docs(config.analysis_items), fraction=config.top, batch_size=bs,
                              learned_options=LearnedMaskOptions(steps=config.learned_steps), progress=False,
                              exact_sweep=exact_sweep)
        chosen = top_heads(result.rankings[config.method].scores, config.top)
        with timed("amplification (validation)"):
            follow, control = split_docs(shapes_docs(config.amplify_items))
            with frozen(model):
                objective = Objective(model, list(iter_batches(model, processor, follow, bs)),
                                      list(iter_batches(model, processor, control, bs)))
                learn_amplification(objective, 2 * len(chosen), progress=False)
                choose_alpha(objective, chosen, list(config.alphas))
    return counter.phases, seconds


def grouped(planned: list[Phase]) -> list[Phase]:
    """The plan with identify's sub-phases summed into one row, as they are counted."""
    inside = [p for p in planned if p.name in IDENTIFY_PHASES]
    out = [p for p in planned if p.name not in IDENTIFY_PHASES]
    identify_row = Phase("identify", sum(p.forwards for p in inside), sum(p.backwards for p in inside),
                         sum(p.layer_tokens for p in inside))
    return out[:2] + [identify_row] + out[2:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exact-sweep", choices=("shortlist", "full"), default="shortlist")
    parser.add_argument("--skip-counted", action="store_true", help="plans only (no model runs)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON")
    parser.add_argument("--steer", action="store_true", help="plan the 7B layouts with reproduce's steering step "
                        "(off by default for a model of the user's, as `modarb reproduce --model` has it)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    config = ReproduceConfig()
    results = {"h100_seconds_per_layer_token": H100_SECONDS_PER_LAYER_TOKEN, "exact_sweep": args.exact_sweep,
               "config": {"analysis_items": config.analysis_items, "amplify_items": config.amplify_items,
                          "limit": config.limit, "batch_size": config.batch_size, "top": config.top},
               "models": {}}
    if not args.skip_counted:
        for name, model, processor in counted_models():
            work = shapes_workload(model.config, processor, config)
            layers, heads = model.config.get_text_config().num_hidden_layers, model.config.get_text_config().num_attention_heads
            planned = reproduce_plan(layers, heads, work, config, args.exact_sweep)
            start = time.perf_counter()
            counted, seconds = counted_phases(model, processor, config, args.exact_sweep)
            wall = time.perf_counter() - start
            by_name = {p.name: p for p in grouped(planned)}
            rows = [{"phase": c.name, "counted": c.to_json(), "planned": by_name[c.name].to_json(),
                     "cpu_seconds": seconds[c.name]} for c in counted]
            print(f"\n== {name} ({layers} x {heads}), counted (CPU wall {wall:.0f} s) vs planned")
            for row in rows:
                c, p = row["counted"], row["planned"]
                print(f"{row['phase']:<28} forwards {c['forwards']:>7,} (plan {p['forwards']:>7,})  layer-tokens "
                      f"{c['layer_tokens']:>13,} (plan {p['layer_tokens']:>13,})  CPU {row['cpu_seconds']:.0f} s")
            print(table(planned))
            results["models"][name] = {"layers": layers, "heads": heads, "counted": rows, "cpu_seconds": round(wall, 1),
                                       "plan": [p.to_json() for p in planned],
                                       "plan_total": totals(planned).to_json()}
    user_model = replace(config, steer=args.steer)  # `reproduce --model X`: steering only when asked for
    for name, (layers, heads, tokens, text) in LAYOUTS_7B.items():
        planned = reproduce_plan(layers, heads, planned_workload(config, tokens, text), user_model, args.exact_sweep)
        print(f"\n== {name} ({layers} x {heads}, {tokens} tokens a prompt), planned")
        print(table(planned))
        results["models"][name] = {"layers": layers, "heads": heads, "tokens": tokens,
                                   "plan": [p.to_json() for p in planned], "plan_total": totals(planned).to_json()}
    if args.out:
        from modarb_tasks.files import write_json

        write_json(args.out, results)
    return 0


def counted_models():
    """(name, model, processor): the bundled organism and a wider random-init one."""
    from interventions.model.loading import load_model
    from interventions.organism.model import Architecture, build_model, build_processor

    model, processor = load_model(None)
    yield "organism", model, processor
    arch = Architecture(layers=8, heads=12, head_dim=4, hidden=48, intermediate=96)
    processor = build_processor(arch)
    yield "organism-8x12 (random init)", build_model(processor, arch, seed=0).eval(), processor


if __name__ == "__main__":
    raise SystemExit(main())
