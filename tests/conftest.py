"""Shared test setup: never touch the network, tiny random-init VLMs of every family, the real MC² folder."""

from __future__ import annotations

import functools
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# One thread per process, in-process and in every `modarb` process a test starts: the suite runs one
# worker per core, and torch's spinning threads on an oversubscribed core run 5-10x slower.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import pytest  # noqa: E402
import torch  # noqa: E402

from interventions.testing.random_init import IMAGE_TOKEN_ID, TINY_FAMILIES, build_tiny_model  # noqa: E402
from interventions.testing.random_init import random_batch  # noqa: E402

ATTENTIONS = ("eager", "sdpa")
MC2_DIR_ENV = "MODARB_MC2_DIR"  # the folder of the real MC² JSON files (they are not in the repository)
MC2_BESIDE_THE_REPO = Path(__file__).resolve().parents[2] / "shared" / "data" / "mc2"

torch.set_num_threads(1)


@pytest.fixture(params=TINY_FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(params=ATTENTIONS)
def attn(request) -> str:
    return request.param


@pytest.fixture
def tiny(family, attn):
    """A fresh tiny model of `family` with `attn` attention (builds in milliseconds)."""
    return build_tiny_model(family, attn)[0]


@pytest.fixture
def tiny_pair(family):
    """The same tiny model (same seed, same weights) with eager and with sdpa attention."""
    return {impl: build_tiny_model(family, impl)[0] for impl in ATTENTIONS}


@pytest.fixture
def batch(tiny):
    """A left-padded batch of two prompts [text][image][text] for `tiny`."""
    return random_batch(tiny, batch_size=2)


@pytest.fixture(scope="session", autouse=True)
def _environment_report_once():
    """torch's environment report, which lm-eval writes into every results file, gathered once per test process:
    it runs pip, lscpu and more in subprocesses (about a second each time), and the suite scores hundreds of runs."""
    from torch.utils import collect_env

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(collect_env, "get_pretty_env_info", functools.cache(collect_env.get_pretty_env_info))
        yield


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(autouse=True)
def _one_thread():
    """Back to one torch thread after a test that asked for more (the organism's trainer sets its own):
    left at two, every later test on that worker would compete with the other worker for the cores."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def _append_token(model, batch: dict, token: torch.Tensor) -> dict:
    """`batch` with one more (generated) token per row, extended the way generate() extends it."""
    grown = dict(batch, input_ids=torch.cat([batch["input_ids"], token[:, None]], 1))
    grown["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones_like(token)[:, None]], 1)
    for key in ("token_type_ids", "mm_token_type_ids"):  # PaliGemma: generated tokens are the suffix (1)
        if key in batch:
            value = int(model.config.model_type == "paligemma")
            grown[key] = torch.cat([batch[key], torch.full_like(token, value)[:, None]], 1)
    return grown


def _greedy(model, batch: dict, steps: int, cached: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens [B, steps] and their raw logits [B, steps, V], never picking image/delimiter ids.

    cached=True: one generate() call with a KV cache; False: a full uncached forward per step.
    """
    if cached:
        out = model.generate(
            **batch, max_new_tokens=steps, do_sample=False, eos_token_id=None, pad_token_id=0,
            suppress_tokens=list(range(IMAGE_TOKEN_ID, model.config.get_text_config().vocab_size)),
            output_logits=True, return_dict_in_generate=True,
        )
        return out.sequences[:, batch["input_ids"].shape[1]:], torch.stack(out.logits, 1)
    tokens, step_logits = [], []
    for _ in range(steps):
        last = model(**batch, use_cache=False).logits[:, -1]
        token = last[:, :IMAGE_TOKEN_ID].argmax(-1)
        tokens.append(token)
        step_logits.append(last)
        batch = _append_token(model, batch, token)
    return torch.stack(tokens, 1), torch.stack(step_logits, 1)


@pytest.fixture
def greedy():
    """_greedy: greedy decoding with a KV cache (generate) or by uncached full forwards."""
    return _greedy


@pytest.fixture(scope="session")
def organism_dir():
    """The bundled organism's weights folder (a Path); skips, naming the folder, until it is trained."""
    from interventions.organism import organism_path

    try:
        return organism_path()
    except FileNotFoundError as error:
        pytest.skip(f"bundled organism not available: {error}")


@pytest.fixture(scope="session")
def mc2_dir_if_present() -> Path | None:
    """The real MC² folder ($MODARB_MC2_DIR, else ../shared/data/mc2 beside the repository), None when absent.

    For a fixture that runs its MC² part only where the files are; tests take `mc2_dir`.
    A $MODARB_MC2_DIR that does not hold the benchmark is an error, not a skip: it was asked for.
    """
    from modarb_tasks.mc2 import BENCHMARK_FILE

    configured = os.environ.get(MC2_DIR_ENV)
    folder = Path(configured) if configured else MC2_BESIDE_THE_REPO
    if (folder / BENCHMARK_FILE).is_file():
        return folder
    if configured:
        pytest.fail(f"{MC2_DIR_ENV}={configured} holds no {BENCHMARK_FILE}; point it at the MC² folder or unset it")
    return None


@pytest.fixture(scope="session")
def mc2_dir(mc2_dir_if_present) -> Path:
    """The real MC² folder (a Path); skips, naming where it looked, when the files are not on this machine."""
    if mc2_dir_if_present is None:
        pytest.skip(f"real MC² files not found at {MC2_BESIDE_THE_REPO} (set {MC2_DIR_ENV} to their folder)")
    return mc2_dir_if_present
