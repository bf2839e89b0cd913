"""Batched flow sweep vs one item per forward, and one flow edge at LLaVA-1.5-7B size.

Organism mode (default): the same docs, edges and layer windows swept twice in one process,
batched (--batch-size docs per forward) and one item per forward (batch size 1): wall time of
each, the speed-up, and the largest absolute difference between the two results (baseline P_F
and every per-item ΔP_F), which must be ~0.

    python benchmarks/bench_flow.py [--model PATH] [--n-items 16] [--batch-size 32] [--out bench.json]

7B mode (GPU): a random-init model with the real LLaVA-1.5-7B config (Llama-2-7B text: 32 layers
x 32 heads, hidden 4096; CLIP ViT-L/14-336 vision) in bf16, on random prompts with 576 image
tokens; times one edge (Vision->Instruction) over all layers, each knocked out in the default
window, and reports peak GPU memory. Nothing is downloaded.

    python benchmarks/bench_flow.py --model-config llava-1.5-7b [--batch-size 4] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from interventions.analysis.flow import default_window  # noqa: E402

MAIN_EDGES = ("vision->instruction", "context->instruction", "vision->context", "vision->last", "context->last",
              "instruction->last")
# Prompt parts of the 7B run, in order, with their token counts (576 = (336/14)^2 image patches).
PROMPT_PARTS = (("bos", 1), ("image", 576), ("context", 64), ("instruction", 30), ("question", 12),
                ("constraint", 12))


def bench_organism(args: argparse.Namespace) -> dict:
    from interventions.analysis.flow import flow_sweep
    from interventions.analysis.data import FOLLOW_KINDS, shapes_docs
    from interventions.model.loading import load_model

    model, processor = load_model(args.model, device=args.device)
    docs = shapes_docs(args.n_items, FOLLOW_KINDS, layouts=["standard"])
    flow_sweep(model, processor, docs[:2], edges=MAIN_EDGES[:1], batch_size=2)  # warm-up
    seconds, results = {}, {}
    for name, batch_size in (("batched", args.batch_size), ("per_item", 1)):
        start = time.perf_counter()
        results[name] = flow_sweep(model, processor, docs, edges=MAIN_EDGES, batch_size=batch_size)
        seconds[name] = time.perf_counter() - start
    batched, single = results["batched"], results["per_item"]
    differences = []
    for one, other in zip(batched.parts, single.parts):
        differences.append((one.baseline - other.baseline).abs().max().item())
        differences += [(one.effects[edge] - other.effects[edge]).abs().max().item() for edge in one.effects]
    num_docs, num_windows = len(docs), len(batched.layers)
    return {
        "mode": "organism",
        "model": args.model or "modarb-organism",
        "torch_threads": torch.get_num_threads(),
        "docs": num_docs,
        "edges": list(MAIN_EDGES),
        "window": batched.window,
        "layers": batched.layers,
        "batch_size": args.batch_size,
        "forwards": {
            "batched": sum(-(-len(p.item_ids) // args.batch_size) for p in batched.parts)
            * (1 + len(MAIN_EDGES) * num_windows),
            "per_item": num_docs * (1 + len(MAIN_EDGES) * num_windows),
        },
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        "speedup": round(seconds["per_item"] / seconds["batched"], 2),
        "max_abs_difference": max(differences),
    }


def llava_7b_config(num_layers: int):
    """LLaVA-1.5-7B's config from its public values (no download)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=num_layers,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000, projector_hidden_act="gelu",
                       vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=576)


def random_doc_batch(model, batch_size: int, seed: int = 0):
    """A DocBatch of random prompts laid out as PROMPT_PARTS, with contiguous token groups."""
    from interventions.analysis.batches import DocBatch
    from interventions.mechanism.token_groups import GROUP_NAMES

    gen = torch.Generator().manual_seed(seed)
    length = sum(count for _, count in PROMPT_PARTS)
    ids = torch.randint(3, 32000, (batch_size, length), generator=gen)
    groups = {name: torch.zeros(batch_size, length, dtype=torch.bool) for name in GROUP_NAMES}
    start = 0
    for name, count in PROMPT_PARTS:
        if name in groups:
            groups[name][:, start : start + count] = True
        start += count
    ids[:, 0] = 1
    ids[groups["image"]] = model.config.image_token_index
    groups["last"][:, -1] = True
    side = model.config.vision_config.image_size
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(batch_size, 3, side, side, generator=gen).to(model.dtype),
    }
    return DocBatch(
        docs=[{} for _ in range(batch_size)],
        inputs={key: value.to(model.device) for key, value in inputs.items()},
        groups={name: mask.to(model.device) for name, mask in groups.items()},
        follow_ids=[[100, 101]] * batch_size,
        compete_ids=[[200]] * batch_size,
    )


def bench_7b(args: argparse.Namespace) -> dict:
    from interventions.analysis.flow import sweep_batch
    from interventions.mechanism.knockout import layer_window
    from interventions.testing.random_init import build_from_config

    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    start = time.perf_counter()
    model = build_from_config(llava_7b_config(args.num_layers), dtype=dtype, device=args.device,
                              attn_implementation="sdpa")
    build_seconds = time.perf_counter() - start
    batch = random_doc_batch(model, args.batch_size)
    window = default_window(args.num_layers)
    windows = [layer_window(layer, window, args.num_layers) for layer in range(args.num_layers)]
    cuda = args.device.startswith("cuda")
    sweep_batch(model, batch, MAIN_EDGES[:1], windows[:1])  # warm-up
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    baseline, effects = sweep_batch(model, batch, MAIN_EDGES[:1], windows)
    seconds = time.perf_counter() - start  # the sweep moves each P_F to the CPU: synchronised
    effect = effects[MAIN_EDGES[0]]
    return {
        "mode": "llava-1.5-7b random init",
        "device": torch.cuda.get_device_name() if cuda else args.device,
        "dtype": str(dtype).removeprefix("torch."),
        "num_layers": args.num_layers,
        "parameters": sum(p.numel() for p in model.parameters()),
        "build_seconds": round(build_seconds, 2),
        "batch_size": args.batch_size,
        "prompt_tokens": batch.inputs["input_ids"].shape[1],
        "edge": MAIN_EDGES[0],
        "window": window,
        "forwards": 1 + len(windows),
        "seconds": round(seconds, 3),
        "seconds_per_forward": round(seconds / (1 + len(windows)), 4),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "finite": bool(torch.isfinite(baseline).all() and torch.isfinite(effect).all()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="organism mode: model folder (default: the bundled organism)")
    parser.add_argument("--model-config", choices=("llava-1.5-7b",), default=None,
                        help="time one edge on a random-init model of this real config instead (GPU)")
    parser.add_argument("--num-layers", type=int, default=32, help="7B mode: decoder layers (fewer for a smoke run)")
    parser.add_argument("--n-items", type=int, default=16, help="organism mode: items per instruction side")
    parser.add_argument("--batch-size", type=int, default=None, help="docs per forward (default: 32; 7B mode: 4)")
    parser.add_argument("--device", default=None, help="default: cpu (organism), cuda (7B)")
    parser.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = parser.parse_args()
    if args.model_config:
        args.device = args.device or "cuda"
        args.batch_size = args.batch_size or 4
        numbers = bench_7b(args)
    else:
        args.device = args.device or "cpu"
        args.batch_size = args.batch_size or 32
        numbers = bench_organism(args)
    text = json.dumps(numbers, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
