"""Checks that a model can load here, made before any weight is read (and without importing torch
or transformers unless the answer needs them), so a wrong --model / pretrained= / --device is one
line within a second, not a traceback after minutes of loading."""

from __future__ import annotations

import json
import os
from pathlib import Path

from modarb_tasks.errors import ModarbError


def check_device(device: str | None) -> None:
    """One line for a device this machine does not have, before any model is moved there."""
    if device is None:
        return
    import torch

    name = str(device)
    try:
        parsed = torch.device(name)
    except RuntimeError:
        raise ModarbError(f"--device {name} is not a torch device; give cpu, cuda, cuda:1, mps ...") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            built = "" if torch.version.cuda else " (this torch is built without CUDA)"
            raise ModarbError(f"--device {name}: no CUDA GPU is available here{built}; use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise ModarbError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ModarbError(f"--device {name}: MPS is not available here; use --device cpu")


def check_pretrained(source: str, trust_remote_code: bool = False) -> None:
    """One line for a model that cannot load (missing, not cached offline, text-only, truncated
    weights), before transformers reads any weights."""
    folder = _model_folder(source)
    if folder is None:
        return  # a hub id lm-eval/transformers may download (HF_HUB_OFFLINE is not set)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModarbError(f"model folder {source} has no config.json; give a folder written by save_pretrained")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModarbError(f"{config_file} is not valid JSON ({error}); save the model again") from None
    model_type = config.get("model_type")
    if "vision_config" not in config and not (trust_remote_code and "auto_map" in config) and not _is_vlm_type(model_type):
        raise ModarbError(f"{source} is a text-only model (model_type {model_type!r}); modarb needs a vision-language "
                          "model such as LLaVA, Qwen2-VL, Idefics3 or the bundled organism")
    if Path(source).expanduser().is_dir() or _offline():  # a hub snapshot may still download what it lacks
        _check_files_present(folder, source)
    for weights in sorted(folder.glob("*.safetensors")):
        _check_safetensors(weights)


WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def _check_files_present(folder: Path, source: str) -> None:
    """One line for a folder that has a config but lacks the weights, the tokenizer or the image processor."""
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_FILES):
        raise ModarbError(f"model folder {source} has a config.json but no weight files (*.safetensors); save the "
                          "model there with save_pretrained (or finish copying it)")
    for kind, names in (("tokenizer", TOKENIZER_FILES), ("image processor", PROCESSOR_FILES)):
        if not any((folder / name).is_file() for name in names):
            raise ModarbError(f"model folder {source} has weights but no {kind} files ({' / '.join(names[:2])}); "
                              "save the processor beside the model (processor.save_pretrained(folder))")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _is_vlm_type(model_type: str | None) -> bool:
    """Whether transformers maps `model_type` to an image-text-to-text model (asked only when the
    config has no vision_config: the import costs seconds)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def _model_folder(source: str) -> Path | None:
    """The folder holding `source`'s files: itself, or its snapshot in the HF cache (None: not cached, may download)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    looks_local = source.startswith((".", "/", "~")) or source.count("/") != 1 or path.exists()
    if looks_local:
        raise ModarbError(f"model folder {source} not found; give a folder saved with save_pretrained, "
                          "or a hub id (org/name) already in the Hugging Face cache")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source, "config.json")
    if isinstance(cached, str):
        return Path(cached).parent
    if _offline():
        raise ModarbError(f"model {source} is neither a local folder nor in the Hugging Face cache, and HF_HUB_OFFLINE "
                          "forbids downloading it; download it first (hf download " + source + ") or give a folder")
    return None


def _check_safetensors(path: Path) -> None:
    """safetensors' own reader refuses a file its header does not cover (truncated) or cannot parse."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt"):
            pass
    except SafetensorError as error:
        raise ModarbError(f"weights file {path} is truncated or corrupt ({path.stat().st_size} bytes: {error}); "
                          "download or save the model again") from None
