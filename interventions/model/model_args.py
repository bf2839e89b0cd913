"""`hf-modarb`'s model args checked before any weight is read: a typo, a value of the wrong type
or an argument that would be ignored is one line naming the argument and the fix.

lm-eval hands unknown model args on to `from_pretrained`, where a typo (`blok=L3H1`) ends in a
TypeError deep inside the model's constructor; an ignored one (`block=...,alpha=5`) silently runs
something else than asked. The known args are the wrapper's, lm-eval's HFLM / HFMultimodalLM
ones and the `from_pretrained` options people pass through lm-eval.
"""

from __future__ import annotations

import difflib
import inspect
import math

from modarb_tasks.errors import ModarbError

OWN_ARGS = ("pretrained", "spec", "block", "amplify", "alpha", "positions")
STEER_ARGS = ("steer", "steer_layer", "steer_alpha", "steer_positions")
FROM_PRETRAINED_ARGS = (
    "attn_implementation", "device_map", "low_cpu_mem_usage", "load_in_8bit", "load_in_4bit", "quantization_config",
    "cache_dir", "local_files_only", "token", "use_safetensors", "variant", "torch_dtype", "offload_state_dict",
)
COMMON_ARGS = ("device", "batch_size", "max_batch_size", "dtype", "trust_remote_code", "revision", "parallelize",
               "max_length", "image_string", "max_images", "interleave", "convert_img_format", "peft")  # lm-eval's
DTYPES = ("auto", "float32", "float16", "bfloat16", "half", "float", "bf16", "fp16")


def known_args() -> set[str]:
    """Every model arg hf-modarb accepts."""
    from lm_eval.models.hf_vlms import HFMultimodalLM
    from lm_eval.models.huggingface import HFLM

    named = {name for cls in (HFLM, HFMultimodalLM) for name, parameter in inspect.signature(cls.__init__).parameters.items()
             if parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL) and name != "self"}
    return named | set(OWN_ARGS) | set(STEER_ARGS) | set(FROM_PRETRAINED_ARGS)


def check_model_args(kwargs: dict, *, spec, block, amplify, alpha, positions) -> None:
    """ModarbError for the first model arg that cannot work; `kwargs` are those hf-modarb passes on."""
    from interventions.mechanism.spec import POSITION_SCOPES

    quick = set(OWN_ARGS) | set(STEER_ARGS) | set(FROM_PRETRAINED_ARGS) | set(COMMON_ARGS)
    known = quick if set(kwargs) <= quick else known_args()  # known_args imports lm-eval's HF model (seconds)
    for name in kwargs:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"did you mean {close[0]}=?" if close else f"hf-modarb's own are {', '.join(OWN_ARGS)}"
            raise ModarbError(f"unknown model arg {name}= for hf-modarb; {hint}")
    for name, value in (("spec", spec), ("block", block), ("amplify", amplify)):
        if value is not None and not str(value).replace(";", "").strip():
            raise ModarbError(f"{name}= is empty, so nothing would change; give heads (e.g. {name}=L3H1;L5H7)"
                              if name != "spec" else "spec= is empty; give a spec file or drop spec=")
    if spec and (block or amplify):
        raise ModarbError("give either spec=<file> or inline block=/amplify= heads, not both")
    if alpha is not None:
        if not amplify:
            raise ModarbError(f"alpha={alpha} scales amplify= heads, but none are given (block= sets heads to 0); "
                              "add amplify=L<layer>H<head> or drop alpha")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
            raise ModarbError(f"alpha={alpha} must be a finite number >= 0, e.g. alpha=2")
    if positions != "all":
        if positions not in POSITION_SCOPES:
            raise ModarbError(f"positions={positions} is not a position scope; choose one of {', '.join(POSITION_SCOPES)}")
        if not (block or amplify):
            raise ModarbError(f"positions={positions} applies to block=/amplify= heads, but none are given "
                              "(a spec file sets its own positions); add block=... or drop positions")
    dtype = kwargs.get("dtype")
    if isinstance(dtype, str) and dtype not in DTYPES:
        raise ModarbError(f"dtype={dtype} is not a dtype; choose one of {', '.join(DTYPES)}")
    batch_size = kwargs.get("batch_size")
    if batch_size is not None and not (str(batch_size).isdigit() and int(batch_size) >= 1):
        raise ModarbError(f"--batch_size {batch_size} must be a whole number >= 1 (hf-modarb, like hf-multimodal, "
                          "has no 'auto')")


def check_steer_args(*, spec, steer, steer_layer, steer_alpha, steer_positions="all") -> None:
    """ModarbError for the first inline steering arg that cannot work; the vector file is read and
    checked here (one finite 1-D tensor), its width against the model once the model is loaded."""
    from interventions.mechanism.spec import POSITION_SCOPES
    from interventions.mechanism.steer import read_vector

    if not steer:
        given = [f"{name}={value}" for name, value in (("steer_layer", steer_layer), ("steer_alpha", steer_alpha))
                 if value is not None] + ([f"steer_positions={steer_positions}"] if steer_positions != "all" else [])
        if given:
            raise ModarbError(f"{given[0]} applies to a steering vector, but none is given; add steer=PATH.safetensors "
                              f"or drop {given[0].split('=')[0]}")
        return
    if spec:
        raise ModarbError("give either spec=<file> or inline steer=<vector>, not both (a spec file can hold steering)")
    if isinstance(steer_layer, bool) or not (isinstance(steer_layer, int) and steer_layer >= 0):
        raise ModarbError(f"steer_layer={steer_layer} must be a decoder layer number >= 0 (0-based), e.g. steer_layer=3")
    if isinstance(steer_alpha, bool) or not isinstance(steer_alpha, (int, float)) or not math.isfinite(steer_alpha):
        raise ModarbError(f"steer_alpha={steer_alpha} must be a finite number, e.g. steer_alpha=4")
    if steer_positions not in POSITION_SCOPES:
        raise ModarbError(f"steer_positions={steer_positions} is not a position scope; "
                          f"choose one of {', '.join(POSITION_SCOPES)}")
    if not str(steer).endswith(".safetensors"):
        raise ModarbError(f"steer={steer} must be a .safetensors file holding one 1-D vector (never a pickle)")
    read_vector(steer)


def check_cli_model_args(model_args: dict) -> None:
    """check_model_args (and the pretrained= folder) for `modarb eval --model hf-modarb --model_args ...`,
    before lm-eval indexes its tasks (half a minute) and loads the model."""
    from interventions.model.model_files import check_pretrained

    own = {name: model_args.get(name) for name in ("spec", "block", "amplify", "alpha")}
    rest = {name: value for name, value in model_args.items() if name not in OWN_ARGS and name not in STEER_ARGS}
    check_model_args(rest, **own, positions=model_args.get("positions", "all"))
    check_steer_args(spec=model_args.get("spec"), **{name: model_args.get(name) for name in STEER_ARGS[:3]},
                     steer_positions=model_args.get("steer_positions", "all"))
    if isinstance(model_args.get("pretrained"), str):
        check_pretrained(model_args["pretrained"], trust_remote_code=bool(model_args.get("trust_remote_code")))


def is_multimodal_task(task) -> bool:
    """A task whose docs carry an image (lm-eval marks them by `doc_to_image`)."""
    return bool(getattr(getattr(task, "config", None), "doc_to_image", None))


def check_tasks_for_spec(spec, tasks) -> None:
    """ModarbError naming the first task the spec cannot run on (before any request is sent)."""
    if spec is None or not (spec.groups_needed() or spec.needs_answer_positions()):
        return
    needed = sorted(spec.groups_needed())
    for name, task in tasks:
        if is_multimodal_task(task):
            continue
        if "image" in needed:
            raise ModarbError(f"spec {spec.identity()} needs the image tokens ({', '.join(needed)}), but task {name} "
                              "has no image; run it on image tasks (e.g. --tasks modality_following) or use "
                              "positions=all or positions=last")
        if getattr(task.config, "output_type", None) not in ("loglikelihood", "multiple_choice"):
            continue
        if needed:
            raise ModarbError(f"spec {spec.identity()} needs token groups {needed}, which hf-modarb builds for "
                              f"generation and image loglikelihood only, but task {name} is text-only loglikelihood; "
                              "use positions=all or drop the task")
        raise ModarbError(f"spec {spec.identity()} acts at the answer positions (positions=last), which hf-modarb "
                          f"finds for generation and image loglikelihood only, but task {name} is text-only "
                          "loglikelihood; use positions=all or drop the task")
