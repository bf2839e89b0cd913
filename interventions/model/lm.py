"""`hf-modarb`: lm-eval's HFMultimodalLM with an intervention spec applied to every request.

It keeps everything the stock class does (batching, chat templates, devices, dtype,
`parallelize=True`, accelerate data parallelism) and adds three things:
- the intervention (`spec=path.json`, or inline `block=L3H1;L5H7`, `amplify=...,alpha=2`),
  applied by hooks around each batch's forward/generate call, with token groups built from
  the doc's recorded prompt spans when the spec needs them;
- `loglikelihood` for requests with images (stock raises NotImplementedError), one batched
  processor call and one forward per batch;
- `gc.freeze()` around request loops: the stock loop runs `gc.collect()` after every batch,
  which on a small model costs more than the model itself (DESIGN.md §6).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance
from lm_eval.api.registry import register_model
from lm_eval.models.hf_vlms import HFMultimodalLM
from tqdm import tqdm

from interventions.mechanism.apply import apply_spec
from interventions.model.cache import cache_record, weights_fingerprint
from interventions.model.encoding import encode_multimodal, image_string
from modarb_tasks.errors import ModarbError
from interventions.model.model_files import check_pretrained
from interventions.model.model_args import check_model_args, check_tasks_for_spec
from interventions.organism import organism_path
from interventions.model.processors import load_processor
from interventions.mechanism.spec import InterventionSpec, model_name
from interventions.mechanism.token_groups import doc_token_groups, image_token_id

MODARB_VERSION = "0.1.0"
DEFAULT_ALPHA = 2.0  # amplify= heads' scale when alpha= is not given


@register_model("hf-modarb")
class ModarbVLM(HFMultimodalLM):
    """A Hugging Face VLM under an intervention spec (none: the plain model)."""

    quiet = False  # True: no per-request progress bars (`modarb reproduce` shows one bar for all its runs)

    def __init__(
        self,
        pretrained=None,
        spec: str | None = None,
        block: str | None = None,
        amplify: str | None = None,
        alpha: float | None = None,
        positions: str = "all",
        **kwargs,
    ) -> None:
        check_model_args(kwargs, spec=spec, block=block, amplify=amplify, alpha=alpha, positions=positions)
        if kwargs.get("device") is None:  # HFLM's own default is "cuda", even on a CPU-only machine
            kwargs["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        if isinstance(pretrained, str):
            check_pretrained(pretrained, trust_remote_code=bool(kwargs.get("trust_remote_code")))
        super().__init__(str(organism_path()) if pretrained is None else pretrained, **kwargs)
        # the analyses' rule too (interventions.model.encoding): Qwen's vision start/end, Gemma 3's begin-of-image
        self.image_token = image_string(self.config, self.tokenizer, kwargs.get("image_string"),
                                        int(kwargs["image_token_id"]) if kwargs.get("image_token_id") else None)
        alpha = DEFAULT_ALPHA if alpha is None else alpha
        self.spec = load_spec(self.model, spec=spec, block=block, amplify=amplify, alpha=alpha, positions=positions)
        self._model_fingerprint = weights_fingerprint(self.model)
        self.cache_path: str | None = None  # set by the scoped --use_cache wrapper (interventions/model/cache.py)
        self._docs_by_context: dict[str, dict] = {}
        self._batch_groups: dict[str, torch.Tensor] | None = None

    def _create_tokenizer(self, pretrained, tokenizer, revision="main", trust_remote_code=False, **kwargs) -> None:
        """The stock processor loader, through `load_processor`: without torchvision the Qwen2-VL,
        Qwen2.5-VL, LLaVA-OneVision and SmolVLM processors fail AutoProcessor's video check."""
        name = pretrained if isinstance(pretrained, str) else self.model.name_or_path
        self.processor = load_processor(name, trust_remote_code=bool(trust_remote_code), revision=revision, **self.pixels)
        self.tokenizer = self.processor.tokenizer

    def check_tasks(self, tasks) -> None:
        """Called with lm-eval's (name, task) pairs before the first request: refuse a task the spec cannot run on."""
        check_tasks_for_spec(self.spec, tasks)

    # --- what the results JSON records ------------------------------------------------------
    def get_model_info(self) -> dict:
        """Model facts for the results' config, without asking the hub (everything is local)."""
        return {
            "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
            "model_dtype": str(self.model.dtype),
            "model_name": model_name(self.model),
            "modarb_version": MODARB_VERSION,
            "modarb_spec_identity": self.spec.identity() if self.spec else "none",
            "modarb_spec_name": spec_name(self.spec),
            "modarb_spec": self.spec.to_dict() if self.spec else None,
            "modarb_cache": cache_record(self),
        }

    def cache_scope(self) -> dict:
        """What a cached answer depends on besides the request: the model, the spec, the image resolution."""
        return {
            "lm": "hf-modarb",
            "model": self._model_fingerprint,
            "spec": self.spec.identity() if self.spec else "none",
            "pixels": dict(self.pixels),
        }

    # --- generation -----------------------------------------------------------------------
    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        self._docs_by_context = {request.args[0]: request.doc for request in requests}
        parent = super().generate_until
        with _frozen_gc():
            return _by_modality(requests, lambda subset: parent(subset, disable_tqdm=disable_tqdm or self.quiet))

    def tok_batch_multimodal_encode(self, strings, images, padding_side="left", left_truncate_len=None,
                                    truncation=False):
        docs = [self._docs_by_context.get(s) for s in strings]
        return self._encode(strings, images, docs, padding_side, left_truncate_len, truncation)

    def _encode(self, strings, images, docs, padding_side="left", left_truncate_len=None, truncation=False):
        """The stock encoder's steps through interventions.model.encoding (the function the analyses call),
        and the batch's token groups."""
        encoding, texts = encode_multimodal(
            self.processor, getattr(self.config, "model_type", ""), strings, images, image_text=self.image_token,
            chat_applied=self.chat_applied, max_images=self.max_images, rgb=self.rgb, padding_side=padding_side,
            truncation=truncation,
        )
        encoding.to(self.device, self.model.dtype)
        if left_truncate_len:
            encoding["input_ids"] = encoding["input_ids"][:, -left_truncate_len:]
            encoding["attention_mask"] = encoding["attention_mask"][:, -left_truncate_len:]
        self._batch_groups = self._groups(encoding, texts, docs)
        return encoding

    def tok_batch_encode(self, strings, *args, **kwargs):
        input_ids, attention_mask = super().tok_batch_encode(strings, *args, **kwargs)
        encoding = {"input_ids": input_ids, "attention_mask": attention_mask}
        self._batch_groups = self._groups(encoding, strings, [self._docs_by_context.get(s) for s in strings])
        return input_ids, attention_mask

    def _model_multimodal_generate(self, inputs, max_length, stop, **generation_kwargs):
        with self._intervention():
            return super()._model_multimodal_generate(inputs, max_length, stop, **generation_kwargs)

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        with self._intervention():
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

    def _model_call(self, inps, attn_mask=None, labels=None):
        with self._intervention():
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

    # --- likelihood with images -------------------------------------------------------------
    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        self._docs_by_context = {request.args[0]: request.doc for request in requests}
        with _frozen_gc():
            return _by_modality(
                requests,
                lambda subset: self._image_loglikelihood(subset, disable_tqdm)
                if _has_images(subset[0])
                else self._text_loglikelihood(subset, disable_tqdm),
            )

    def _text_loglikelihood(self, requests: list[Instance], disable_tqdm: bool) -> list[tuple[float, bool]]:
        """Stock text-only scoring. It encodes request by request, so no token groups exist for it:
        refuse a spec that needs them rather than reuse the previous batch's masks."""
        if self.spec is not None and self.spec.groups_needed():
            raise ModarbError(
                f"spec {self.spec.identity()} needs token groups {sorted(self.spec.groups_needed())}, which hf-modarb "
                "builds for generation and image loglikelihood only; use positions=all for text-only loglikelihood tasks"
            )
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm or self.quiet)

    def _image_loglikelihood(self, requests: list[Instance], disable_tqdm: bool) -> list[tuple[float, bool]]:
        """Score each continuation after its context+image: one processor call and forward per batch."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i].args[0] + requests[i].args[1]))
        progress = tqdm(total=len(requests), disable=disable_tqdm or self.quiet or self.rank != 0,
                        desc="loglikelihood (images)")
        for start in range(0, len(order), self.batch_size):
            batch = [requests[i] for i in order[start : start + self.batch_size]]
            pairs = [_split_trailing_space(*request.args[:2]) for request in batch]
            strings = [context + continuation for context, continuation in pairs]
            visuals = [list(request.args[2]["visual"]) for request in batch]
            encoding = self._encode(strings, visuals, [request.doc for request in batch])
            with torch.no_grad(), self._intervention():
                logits = self.model(**encoding).logits
            log_probs = F.log_softmax(logits.float(), dim=-1)
            for row, (index, (context, continuation)) in enumerate(zip(order[start : start + self.batch_size], pairs)):
                length = len(self.tok_encode(context + continuation)) - len(self.tok_encode(context))
                if length < 1:
                    raise ModarbError(f"continuation {continuation!r} adds no tokens to its context; check the task's choices")
                targets = encoding["input_ids"][row, -length:]
                scores = log_probs[row, -length - 1 : -1]
                picked = scores.gather(-1, targets[:, None]).squeeze(-1)
                results[index] = (float(picked.sum()), bool((scores.argmax(-1) == targets).all()))
            progress.update(len(batch))
        progress.close()
        return results

    # --- the intervention around one batch ---------------------------------------------------
    def _groups(self, encoding, texts: Sequence[str], docs: Sequence[dict | None]) -> dict[str, torch.Tensor] | None:
        """Token-group masks for the batch (`texts`: what the processor got), built only when the spec needs them."""
        if self.spec is None or not self.spec.groups_needed():
            return None
        missing = next((i for i, doc in enumerate(docs) if not doc or "spans" not in doc or "prompt" not in doc), None)
        if missing is not None:
            raise ModarbError(
                f"spec {self.spec.identity()} needs token groups {sorted(self.spec.groups_needed())}, but the task's docs "
                "record no prompt spans; run it on a modarb task (they record them)"
            )
        return doc_token_groups(encoding, texts, docs, self.tokenizer, image_token_id(self.model.config))

    def _intervention(self):
        if self.spec is None:
            return nullcontext()
        return apply_spec(self.model, self.spec, self._batch_groups)


def load_spec(
    model, *, spec: str | None, block: str | None, amplify: str | None, alpha: float, positions: str
) -> InterventionSpec | None:
    """The spec from `spec=` (a JSON file) or the inline args (checked by check_model_args), validated against `model`."""
    if spec:
        loaded = InterventionSpec.load(spec)
        loaded.validate_against(model)
        return loaded
    if block or amplify:
        return InterventionSpec.from_inline(model=model, block=block, amplify=amplify, alpha=alpha, positions=positions)
    return None


def spec_name(spec: InterventionSpec | None) -> str:
    """A human name for a spec: its provenance name, else what it does."""
    if spec is None:
        return "baseline"
    if spec.provenance.get("name"):
        return str(spec.provenance["name"])
    scales = sorted({h.scale for h in spec.heads})
    verb = "block" if scales == [0.0] else "amplify" if all(s > 1 for s in scales) else "scale"
    parts = [f"{verb} {len(spec.heads)} heads"] if spec.heads else []
    if spec.knockout is not None:
        parts.append(f"knockout {len(spec.knockout.edges)} edges")
    return ", ".join(parts) or "no-op"


def _has_images(request: Instance) -> bool:
    return len(request.args) > 2 and bool(request.args[2].get("visual"))


def _by_modality(requests: list[Instance], run) -> list:
    """Run image and text-only requests separately (the stock class decides from the first
    request and breaks on a mixed list, e.g. the `modarb` group), then restore their order."""
    results: list = [None] * len(requests)
    for wants_images in (True, False):
        indices = [i for i, request in enumerate(requests) if _has_images(request) == wants_images]
        if indices:
            for index, result in zip(indices, run([requests[i] for i in indices]), strict=True):
                results[index] = result
    return results


def _split_trailing_space(context: str, continuation: str) -> tuple[str, str]:
    """Move the context's trailing whitespace onto the continuation, as lm-eval's encoders do."""
    stripped = context.rstrip()
    return stripped, context[len(stripped) :] + continuation


@contextmanager
def _frozen_gc() -> Iterator[None]:
    """Move every object to the permanent generation so per-batch gc.collect() has little to scan."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
