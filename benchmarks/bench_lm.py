"""hf-modarb (5%-head block spec) vs stock hf-multimodal vs a hand-written generate loop.

Same model, same docs, same batch size, one process, so the ratios are comparable:
each lm-eval model answers the very same `generate_until` Instances its task builds; the hand
loop is `processor` + `model.generate` over the same docs (interventions/organism/answers.py).
Also times hf-modarb's likelihood path (image requests, stock has none) in requests/s.

    python benchmarks/bench_lm.py [--model PATH] [--docs 64] [--batch-sizes 1,32] [--out bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def build_requests(task_names: list[str], limit: int):
    """The Instances lm-eval would send for `task_names`, and their docs."""
    from lm_eval.tasks import TaskManager, get_task_dict

    from modarb_tasks import TASKS_PATH

    tasks = get_task_dict(task_names, TaskManager(include_path=TASKS_PATH))
    requests, docs = [], []
    for name in task_names:
        task = tasks[name]
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        requests += task.instances
        docs += [instance.doc for instance in task.instances]
    return requests, docs


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the bundled organism")
    parser.add_argument("--docs", type=int, default=64, help="docs per follow task (two tasks)")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = parser.parse_args()

    import lm_eval.models  # noqa: F401  (registers hf-multimodal)
    from lm_eval.models.hf_vlms import HFMultimodalLM

    from interventions.analysis.defaults import top_k
    from interventions.analysis.experiments import random_heads
    from interventions.mechanism.spec import InterventionSpec
    from interventions.model.lm import ModarbVLM
    from interventions.organism import organism_path
    from interventions.organism.answers import generate_answers
    from interventions.mechanism.spec import model_fingerprint

    path = args.model or str(organism_path())
    requests, docs = build_requests(["mf_follow_image", "mf_follow_text"], args.docs)
    ll_requests, _ = build_requests(["mf_follow_image_ll", "mf_follow_text_ll"], args.docs)
    rows = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        modarb = ModarbVLM(pretrained=path, batch_size=batch_size, device=args.device)
        fingerprint = model_fingerprint(modarb.model)
        k = top_k(fingerprint.num_layers * fingerprint.num_heads, 0.05)
        modarb.spec = InterventionSpec.scaling(fingerprint, random_heads(fingerprint, k, random.Random(0)), 0.0, {"name": "bench block 5%"})
        stock = HFMultimodalLM(pretrained=path, batch_size=batch_size, device=args.device)
        # warm-up: first calls pay one-off costs (thread pools, kernels)
        generate_answers(modarb.model, modarb.processor, docs[:batch_size], batch_size=batch_size)
        hand_s, _ = timed(lambda: generate_answers(stock.model, stock.processor, docs, batch_size=batch_size))
        modarb_s, _ = timed(lambda: modarb.generate_until(requests, disable_tqdm=True))
        stock_s, _ = timed(lambda: stock.generate_until(requests, disable_tqdm=True))
        ll_s, _ = timed(lambda: modarb.loglikelihood(ll_requests, disable_tqdm=True))
        rows.append({
            "batch_size": batch_size,
            "requests": len(requests),
            "hand_loop_s": round(hand_s, 3),
            "hf_modarb_s": round(modarb_s, 3),
            "stock_s": round(stock_s, 3),
            "hf_modarb_vs_hand_speed": round(hand_s / modarb_s, 3),
            "hf_modarb_vs_stock_speedup": round(stock_s / modarb_s, 2),
            "loglikelihood_requests": len(ll_requests),
            "loglikelihood_requests_per_s": round(len(ll_requests) / ll_s, 1),
        })
    print(f"model: {path}; spec: block {k} heads (5%); docs: {len(requests)} generate_until requests")
    print(f"{'batch':>5} {'hand s':>8} {'modarb s':>9} {'stock s':>8} {'modarb/hand speed':>18} {'stock/modarb':>13} {'ll req/s':>9}")
    for r in rows:
        print(f"{r['batch_size']:>5} {r['hand_loop_s']:>8.2f} {r['hf_modarb_s']:>9.2f} {r['stock_s']:>8.2f} "
              f"{r['hf_modarb_vs_hand_speed']:>17.2f}x {r['hf_modarb_vs_stock_speedup']:>12.1f}x {r['loglikelihood_requests_per_s']:>9.1f}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"model": path, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
