"""Method names, limits and defaults that the CLI shows in its help: importable without torch.

`modarb --help` builds every subcommand's parser, and a parser shows its defaults; keeping them
here (plain data, no torch, no lm-eval) lets the help print without importing the analyses.
The analyses import them from here too, so a default is stated once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modarb_tasks.errors import ModarbError

METHODS = ("attribution", "ablation", "selective", "learned")
STEER_DIRECTIONS = ("modality", "following", "modality_pc1")  # interventions.analysis.steer fits them
MAX_SETS = 2_000  # exhaustive search only up to this many sets (the organism at k = 2: 1,128)
EXACT_SWEEPS = ("shortlist", "full")  # the exact sweeps score a shortlist on large models, or every head
DEFAULT_LAYOUTS = ("standard", "instruction_after", "system_prompt")  # the prompt layouts flow compares


def check_fraction(fraction: float) -> float:
    if not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
        raise ModarbError(f"top fraction {fraction!r} must be in (0, 1), e.g. 0.05 for the top 5% of heads")
    return float(fraction)


def top_k(num_heads: int, fraction: float) -> int:
    """How many heads the top `fraction` of `num_heads` is: max(1, round(fraction * num_heads)); 5% of 48 is 2."""
    return max(1, round(check_fraction(fraction) * num_heads))


@dataclass(frozen=True)
class LearnedMaskOptions:
    """The learned mask's search (interventions.analysis.learned_mask says why each part is there)."""

    steps: int = 24  # gradient steps per start, each one forward+backward of every analysis batch
    lr: float = 0.3
    init_logits: tuple[float, ...] = (3.0, 2.0)  # starting log alpha: 20% / 40% of the gates drawn not fully open
    sparsity: float = 0.02  # starting price of one fully closed head (the continuation adapts it)
    control: float = 1.0  # the objective's control weight
    jitter: float = 0.1  # seeded noise on the starting logits
    candidates: int = 8  # swaps tried per member in the refinement
    refine_sets: int = 32  # at most this many sets scored exactly in the refinement


@dataclass(frozen=True)
class IdentifyConfig:
    """Everything `modarb identify` takes (its flags, less the data flags)."""

    model: str | None = None  # None: the bundled organism
    out: Path = Path("reports/identify")
    top: float = 0.05  # fraction of heads in the spec
    method: str = "attribution"  # the ranking that makes the spec
    exact: bool = True  # the exact sweeps, plain and selective (--no-exact skips them)
    learned: bool = True  # the learned mask (--no-learned skips it)
    learned_steps: int = LearnedMaskOptions.steps
    exhaustive: bool = False  # also score every k-head set (small models)
    curve_heads: int = 3  # gate-response curves for this many top heads of each ranking
    n_items: int = 64
    batch_size: int = 16
    seed: int = 0  # the learned mask's
    exact_sweep: str = "shortlist"
    device: str | None = "cpu"
    dtype: str = "float32"
    trust_remote_code: bool = False


@dataclass(frozen=True)
class FlowConfig:
    """Everything `modarb flow` takes (its flags, less the data flags)."""

    model: str | None = None  # None: the bundled organism
    out: Path = Path("reports/flow")
    window: int | None = None  # knockout window; None: the odd layer count nearest 30% of the depth
    n_items: int = 32  # items per layout and instruction side
    batch_size: int = 32
    split: str = "validation"  # the shapes split (MC² data always uses its analysis half)
    layouts: tuple[str, ...] = DEFAULT_LAYOUTS
    device: str | None = "cpu"
    dtype: str = "float32"
    trust_remote_code: bool = False


@dataclass
class ReproduceConfig:
    """Everything `modarb reproduce` takes (its flags); the defaults are what `make demo` runs."""

    model: str | None = None  # None: the bundled organism
    out: Path = Path("reports/demo")
    limit: int = 200  # test-split items per task scored by lm-eval
    batch_size: int = 64
    top: float = 0.05
    fractions: tuple[float, ...] = (0.01, 0.02, 0.05, 0.10, 0.15, 0.20)
    draws: int = 5
    alphas: tuple[float, ...] = (1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
    method: str = "learned"
    analysis_items: int = 48  # validation items for flow / identify / amplification (per instruction side and layout)
    learned_steps: int = LearnedMaskOptions.steps  # optimisation steps of the learned head mask, per start
    exact_sweep: str = "shortlist"  # identify's exact sweeps: a shortlist on large models, or "full": every head
    amplify_items: int = 150  # validation items per task that fit the amplification gates and pick the sweep's alpha
    window: int | None = None  # flow knockout window; None: the odd layer count nearest 30% of the depth
    seed: int = 0
    device: str | None = None
    dtype: str = "float32"
    use_cache: Path | None = None  # lm-eval's request cache folder: a rerun answers finished runs from it
    controls: tuple[str, ...] = ()  # lm-eval tasks or groups also scored under every reported intervention
    include_path: Path | None = None  # the folder of the user's own task YAMLs (for --controls)
    controls_limit: int | None = None  # docs per control task; None: all of them
    controls_on_curve: bool = False  # score the controls on the blocking curve's runs too
    trust_remote_code: bool = False  # run the model folder's own code (some families need it)
    data: str = "shapes"  # shapes, mc2 or mc2_paper:<model> (interventions.analysis.data)
    mc2_json: str | None = None  # default: $MODARB_MC2_JSON
    mc2_images: str | None = None  # default: $MODARB_MC2_IMAGES
    steer: bool | None = None  # residual steering beside amplification; None: on for the bundled organism only

    @property
    def steers(self) -> bool:
        """Whether the steering step runs: on a 7B its layer x alpha search and two more lm-eval runs add about
        a tenth to reproduce's time (`--plan` shows it), so beyond the organism it is asked for with --steer."""
        return self.model is None if self.steer is None else self.steer
