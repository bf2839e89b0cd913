"""Head identification: attribution (one forward + one backward per batch) vs the exact ablation sweep.

Same model, same docs, same batches, one process, so the ratio is fair: model passes (forwards +
backwards) and wall time of each method, the speed-up (goal: attribution >= 10x faster), and how
far the two rankings agree (top-5% overlap, goal >= 0.6; Spearman's rho over all heads). Both
methods are warmed up by one untimed forward + backward first.

    python benchmarks/bench_identify.py [--model PATH] [--n-items 64] [--batch-size 16] [--out bench.json]

`--versus-optimum` (organism or any small model) runs, side by side on the same validation batches,
the learned mask, the plain and the selective exact sweeps and the exhaustive search over every
k-head set: passes, wall time, each top set's objective and its agreement with the optimum.

`--model-config llava-1.5-7b` times `identify` on a random-init model with the real LLaVA-1.5-7B
config instead (bf16, CUDA, random tokens and pixels, no network), with peak GPU memory per method.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from interventions.analysis.batches import DocBatch, iter_batches  # noqa: E402
from interventions.analysis.data import shapes_docs  # noqa: E402
from interventions.analysis.identify import (  # noqa: E402
    IdentifyResult,
    LearnedMaskOptions,
    Objective,
    ablation_scores,
    attribution_scores,
    learned_mask_scores,
    rank_correlation,
    selective_scores,
    split_docs,
    top_heads,
    top_overlap,
)
from interventions.analysis.selective import exhaustive_sets  # noqa: E402

SPEEDUP_GOAL = 10.0
OVERLAP_GOAL = 0.6


def llava_15_7b_config():
    """LLaVA-1.5-7B's public config: Llama-2-7B text (32 x 32 heads) + CLIP ViT-L/14 at 336 px."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text = LlamaConfig(
        vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5, hidden_act="silu",
        pad_token_id=32001, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    vision = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
        patch_size=14, projection_dim=768, hidden_act="quick_gelu",
    )
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=32000, image_seq_length=576,
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        pad_token_id=32001, tie_word_embeddings=False,
    )


MODEL_CONFIGS = {"llava-1.5-7b": llava_15_7b_config}


def random_doc_batches(model, count: int, batch_size: int, text_tokens: int, seed: int) -> list[DocBatch]:
    """Batches of random prompts [text][576 image tokens][text] with a random F and C answer token per row."""
    from interventions.testing.random_init import random_batch

    vocab = model.config.get_text_config().vocab_size
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for index in range(count):
        inputs = random_batch(model, batch_size, text_before=text_tokens // 4, text_after=text_tokens, seed=seed + index)
        ids = torch.randint(3, min(vocab, 32000), (batch_size, 2), generator=gen).tolist()
        batches.append(DocBatch(docs=[{}] * batch_size, inputs=inputs, groups={},
                                follow_ids=[[f] for f, _ in ids], compete_ids=[[c] for _, c in ids]))
    return batches


def peak_gib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None


def summarise(result: IdentifyResult, fraction: float, extra: dict) -> dict:
    attribution, ablation = result.rankings["attribution"], result.rankings.get("ablation")
    summary = {
        **extra,
        "fraction": fraction,
        "n_follow_docs": result.n_follow_docs,
        "methods": {
            name: {"passes": r.passes, "seconds": round(r.seconds, 3), **({"peak_gib": r.details["peak_gib"]}
                                                                             if "peak_gib" in r.details else {})}
            for name, r in result.rankings.items()
        },
    }
    if ablation is not None:
        summary.update(
            speedup_wall=round(ablation.seconds / attribution.seconds, 2),
            speedup_passes=round(ablation.passes / attribution.passes, 2),
            top_overlap=top_overlap(attribution.scores, ablation.scores, fraction),
            rank_correlation=rank_correlation(attribution.scores, ablation.scores),
        )
        summary["goals_met"] = {
            f"speedup_wall>={SPEEDUP_GOAL:g}": summary["speedup_wall"] >= SPEEDUP_GOAL,
            f"top_overlap>={OVERLAP_GOAL:g}": summary["top_overlap"] >= OVERLAP_GOAL,
        }
    return summary


def print_table(summary: dict) -> None:
    print(f"\n{summary['model']} on {summary['device']}: {summary['n_follow_docs']} follow docs, "
          f"batch {summary['batch_size']}")
    print(f"{'method':<12}{'passes':>8}{'seconds':>10}{'passes/s':>10}{'peak GiB':>10}")
    for name, m in summary["methods"].items():
        peak = m.get("peak_gib")
        print(f"{name:<12}{m['passes']:>8}{m['seconds']:>10.2f}{m['passes'] / max(m['seconds'], 1e-9):>10.1f}"
              f"{'' if peak is None else peak:>10}")
    if "speedup_wall" in summary:
        rho = summary["rank_correlation"]
        print(f"attribution vs ablation: {summary['speedup_wall']}x faster (wall), {summary['speedup_passes']}x "
              f"fewer passes; top-{summary['fraction'] * 100:g}% overlap {summary['top_overlap']:.2f}, "
              f"Spearman {'n/a' if rho is None else f'{rho:.3f}'}")
        print("goals: " + ", ".join(f"{goal} {'met' if met else 'MISSED'}" for goal, met in summary["goals_met"].items()))


def run_methods(model, follow: list[DocBatch], control: list[DocBatch], args, device: str) -> IdentifyResult:
    """Each method on the same batches, after one untimed warm-up pass; peak memory per method on CUDA."""
    attribution_scores(model, follow[:1], progress=False)  # warm-up: kernels, allocator, autograd
    methods = {"attribution": lambda: attribution_scores(model, follow)}
    if not args.no_exact:
        methods["ablation"] = lambda: ablation_scores(model, follow)
    if args.learned_steps:
        options = LearnedMaskOptions(steps=args.learned_steps)
        methods["learned"] = lambda: learned_mask_scores(model, follow, control, options, seed=args.seed)
    rankings = {}
    for name, method in methods.items():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        rankings[name] = method()
        if device.startswith("cuda"):
            rankings[name].details["peak_gib"] = peak_gib(device)
    return IdentifyResult(rankings, args.fraction, sum(map(len, follow)), sum(map(len, control)))


def versus_optimum(model, follow: list[DocBatch], control: list[DocBatch], fraction: float, seed: int) -> dict:
    """Learned mask vs the exact sweeps vs the exhaustive optimum, on the same batches and objective."""
    from interventions.analysis.identify import frozen

    with frozen(model):
        start = time.perf_counter()
        objective = Objective(model, follow, control)
        open_seconds = time.perf_counter() - start
        rankings = {
            "learned": learned_mask_scores(model, follow, control, LearnedMaskOptions(), seed, fraction=fraction,
                                           objective=objective),
            "ablation": ablation_scores(model, follow),
            "selective": selective_scores(objective),
        }
    k = len(top_heads(rankings["learned"].scores, fraction))
    start = time.perf_counter()
    optimum = exhaustive_sets(objective, k)
    optimum_seconds = time.perf_counter() - start
    best = {tuple(h) for h in optimum["heads"]}
    rows = {}
    for name, ranking in rankings.items():
        heads = top_heads(ranking.scores, fraction)
        value = objective.at(heads)["value"]
        rows[name] = {"passes": ranking.passes, "seconds": round(ranking.seconds, 2), "top": [list(h) for h in heads],
                      "objective": round(value, 4), "share_of_optimum": round(value / optimum["objective"]["value"], 3),
                      "agreement_with_optimum": len(best & set(heads)) / k}
    rows["exhaustive"] = {"passes": optimum["passes"], "seconds": round(optimum_seconds + open_seconds, 2),
                          "top": optimum["heads"], "objective": round(optimum["objective"]["value"], 4),
                          "share_of_optimum": 1.0, "agreement_with_optimum": 1.0}
    return {"k": k, "sets": optimum["sets"], "rows": rows}


def print_versus(result: dict) -> None:
    print(f"\nobjective at each top-{result['k']} set vs the exhaustive optimum over {result['sets']:,} sets")
    print(f"{'method':<12}{'passes':>9}{'seconds':>9}  {'top set':<18}{'objective':>10}{'of optimum':>11}{'agree':>7}")
    for name, row in result["rows"].items():
        top = " ".join(f"L{l}H{h}" for l, h in row["top"])
        print(f"{name:<12}{row['passes']:>9}{row['seconds']:>9.2f}  {top:<18}{row['objective']:>10.4f}"
              f"{row['share_of_optimum']:>11.3f}{row['agreement_with_optimum']:>7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the bundled organism)")
    parser.add_argument("--model-config", choices=sorted(MODEL_CONFIGS), default=None,
                        help="time a random-init model of this real config instead (CUDA, bf16)")
    parser.add_argument("--n-items", type=int, default=64, help="shapes validation items (x2 follow docs)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=1, help="random batches for --model-config")
    parser.add_argument("--text-tokens", type=int, default=64, help="text tokens per random prompt (--model-config)")
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--learned-steps", type=int, default=0, help="also time the learned mask for this many steps")
    parser.add_argument("--no-exact", action="store_true", help="skip the exact sweep (L*H forwards per batch)")
    parser.add_argument("--device", default=None, help="default: cpu, or cuda with --model-config")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--versus-optimum", action="store_true",
                        help="learned mask vs exact sweeps vs the exhaustive k-set optimum (small models)")
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    if args.model_config:
        from interventions.testing.random_init import build_from_config

        device = args.device or "cuda"
        config = MODEL_CONFIGS[args.model_config]()
        start = time.perf_counter()
        model = build_from_config(config, dtype=torch.bfloat16, device=device, attn_implementation="sdpa")
        build_seconds = time.perf_counter() - start
        follow = random_doc_batches(model, args.batches, args.batch_size, args.text_tokens, args.seed)
        control = random_doc_batches(model, args.batches, args.batch_size, args.text_tokens, args.seed + 1000)
        name, extra = f"random-init {args.model_config}", {"build_seconds": round(build_seconds, 1),
                                                            "prompt_tokens": follow[0].inputs["input_ids"].shape[1]}
    else:
        from interventions.model.loading import load_model

        device = args.device or "cpu"
        model, processor = load_model(args.model, device=device)
        follow_docs, control_docs = split_docs(shapes_docs(args.n_items))
        follow = list(iter_batches(model, processor, follow_docs, args.batch_size))
        control = list(iter_batches(model, processor, control_docs, args.batch_size))
        name, extra = str(model.config._name_or_path), {}
        if args.versus_optimum:
            result = versus_optimum(model, follow, control, args.fraction, args.seed)
            result |= {"model": name, "n_follow_docs": len(follow_docs), "n_control_docs": len(control_docs),
                       "batch_size": args.batch_size, "threads": torch.get_num_threads(), "torch": torch.__version__}
            print_versus(result)
            if args.out:
                with open(args.out, "w", encoding="utf-8") as handle:
                    json.dump(result, handle, indent=2)
                print(f"wrote {args.out}")
            return

    result = run_methods(model, follow, control, args, device)
    summary = summarise(result, args.fraction, {
        "model": name,
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads, {platform.machine()})",
        "dtype": str(model.dtype).removeprefix("torch."),
        "batch_size": args.batch_size,
        "torch": torch.__version__,
        **extra,
    })
    print_table(summary)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
