"""The paper's intervention experiments, each scored by lm-eval: block and amplify heads.

- Blocking curve: block the top-ranked k% of heads vs random k% sets (several draws), for a
  range of k, scoring modality following and both ability controls.
- Amplification: scale heads (the learned gates of `amplify.py`, or the top heads by a fixed α
  for a sweep of α) and score every follow item and both controls: the restoration rate is the
  share of the baseline's failed follow items that the model now follows, the broken rate the
  share of the items it followed that it now fails, and the controls show what it costs.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from interventions.analysis.defaults import top_k
from interventions.analysis.evaluation import Evaluator, Run
from interventions.mechanism.spec import HeadScale, InterventionSpec, ModelFingerprint
from interventions.mechanism.heads import Head


def random_heads(fingerprint: ModelFingerprint, k: int, rng: random.Random) -> list[Head]:
    every = [(layer, head) for layer in range(fingerprint.num_layers) for head in range(fingerprint.num_heads)]
    return sorted(rng.sample(every, k))


@dataclass
class BlockPoint:
    fraction: float
    k: int
    top: Run
    random: list[Run]


def blocking_curve(
    evaluator: Evaluator,
    fingerprint: ModelFingerprint,
    ranking: Sequence[Head],
    fractions: Sequence[float],
    draws: int,
    seed: int,
    progress: Callable[[str], None] = lambda _: None,
) -> list[BlockPoint]:
    """Block the top-k% heads of `ranking` and `draws` random k% sets, for each fraction."""
    rng = random.Random(seed)
    points = []
    for fraction in fractions:
        k = top_k(fingerprint.num_layers * fingerprint.num_heads, fraction)
        label = f"{fraction * 100:g}pct"
        progress(f"block top {label}")
        top = evaluator.run(
            f"block_top_{label}",
            InterventionSpec.scaling(fingerprint, ranking[:k], 0.0, {"name": f"block top {label}", "method": "ranking", "k": k}),
        )
        randoms = []
        for draw in range(draws):
            progress(f"block random {label} #{draw + 1}")
            heads = random_heads(fingerprint, k, rng)
            provenance = {"name": f"block random {label} #{draw + 1}", "method": "random", "k": k, "seed": seed}
            randoms.append(evaluator.run(f"block_random_{label}_{draw + 1}", InterventionSpec.scaling(fingerprint, heads, 0.0, provenance)))
        points.append(BlockPoint(fraction, k, top, randoms))
    return points


def block_each_ranking(
    evaluator: Evaluator,
    fingerprint: ModelFingerprint,
    rankings: dict[str, Sequence[Head]],
    fraction: float,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Run]:
    """Block the top `fraction` of heads of each ranking (e.g. the exact sweep's beside attribution's)."""
    k = top_k(fingerprint.num_layers * fingerprint.num_heads, fraction)
    label = f"{fraction * 100:g}pct"
    runs = {}
    for method, ranking in rankings.items():
        progress(f"block top {label} ({method})")
        provenance = {"name": f"block top {label} ({method})", "method": method, "k": k}
        runs[method] = evaluator.run(f"block_top_{label}_{method}", InterventionSpec.scaling(fingerprint, ranking[:k], 0.0, provenance))
    return runs


@dataclass
class AmplifyPoint:
    alpha: float | None  # None: per-head learned gates
    restored: int
    failed: int
    run: Run
    broken: int = 0
    followed: int = 0

    @property
    def restoration_rate(self) -> float:
        return self.restored / self.failed if self.failed else float("nan")

    @property
    def broken_rate(self) -> float:
        return self.broken / self.followed if self.followed else 0.0


def amplify_point(baseline: Run, run: Run, alpha: float | None) -> AmplifyPoint:
    """Restored (failed at baseline, followed now) and broken (followed at baseline, failed now) items."""
    pairs = [(before[doc], follow) for task, before in baseline.follow_by_doc.items()
             for doc, follow in run.follow_by_doc.get(task, {}).items() if doc in before]
    failed = sum(1 for was, _ in pairs if was < 1)
    return AmplifyPoint(alpha, restored=sum(1 for was, now in pairs if was < 1 and now >= 1), failed=failed, run=run,
                        broken=sum(1 for was, now in pairs if was >= 1 and now < 1), followed=len(pairs) - failed)


def amplify_gates(
    evaluator: Evaluator,
    fingerprint: ModelFingerprint,
    gates: dict[Head, float],
    baseline: Run,
    provenance: dict,
) -> AmplifyPoint:
    """Scale each head by its own gate, score every task (as the baseline), compare item by item."""
    spec = InterventionSpec(model=fingerprint, heads=tuple(HeadScale(l, h, float(g)) for (l, h), g in gates.items()),
                            provenance=provenance)
    return amplify_point(baseline, evaluator.run("amplify_learned", spec), None)


def amplification_sweep(
    evaluator: Evaluator,
    fingerprint: ModelFingerprint,
    heads: Sequence[Head],
    alphas: Sequence[float],
    baseline: Run,
    progress: Callable[[str], None] = lambda _: None,
) -> list[AmplifyPoint]:
    """Amplify `heads` by each α and score every task: restored and broken items against the baseline."""
    points = []
    for alpha in alphas:
        progress(f"amplify x{alpha:g}")
        spec = InterventionSpec.scaling(fingerprint, heads, alpha, {"name": f"amplify top x{alpha:g}", "method": "ranking"})
        points.append(amplify_point(baseline, evaluator.run(f"amplify_x{alpha:g}", spec), alpha))
    return points
