"""`hf-modarb`: lm-eval's HFMultimodalLM with an intervention spec applied to every request.

It keeps everything the stock class does (chat templates, devices, dtype, `parallelize=True`,
accelerate data parallelism, request caching) and adds:
- the intervention (`spec=path.json`, or inline `block=L3H1;L5H7`, `amplify=...,alpha=2`,
  `steer=v.safetensors,steer_layer=3,steer_alpha=4`),
  checked against the model and its heads located once, when the spec is set (a PreparedSpec);
  each batch gets hooks for itself only, with token groups built from its docs' recorded
  prompt spans when the spec needs them (a BatchState handed to apply_prepared);
- `loglikelihood` for requests with images (stock raises NotImplementedError), one batched
  processor call and one forward per batch.

lm-eval methods it overrides, and why:
- `generate_until`: its own batch loop, for text-only and image requests alike, batching them
  as the stock loops do (same order, same batches, same generation arguments). The stock loops
  hand the encoder prompt strings only, so a batch's docs could reach its hooks only through a
  lookup by prompt; here the loop that encodes a batch hooks it, and no per-batch data lives on
  the instance. Without the stock multimodal loop's `gc.collect()` after every batch, which on a
  small model costs more than the model itself.
- `loglikelihood`: image requests through the loop above's encoder; text-only ones stay stock.
- `_model_call`: the stock text-only scoring loops (loglikelihood, loglikelihood_rolling) run each
  batch's forward through it; the spec is applied there, without token groups or answer positions
  (they encode request by request, so none exist; a spec that needs them is refused).
- `tok_batch_multimodal_encode`: the encoder the analyses share (interventions.model.encoding).
- `_create_tokenizer` (the processor loader) and `get_model_info` (no hub calls).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance
from lm_eval.api.registry import register_model
from lm_eval.models.hf_vlms import HFMultimodalLM
from lm_eval.models.utils import (
    Collator,
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
    resize_image,
)
from tqdm import tqdm

from interventions.mechanism.apply import BatchState, PreparedSpec, answer_positions, apply_prepared, prepare_spec
from interventions.mechanism.locate import locate_heads
from interventions.model.cache import cache_record, weights_fingerprint
from interventions.model.encoding import encode_multimodal, image_string
from modarb_tasks.errors import ModarbError
from interventions.model.loading import DEFAULT_ATTENTION
from interventions.model.model_files import check_pretrained
from interventions.model.model_args import check_model_args, check_steer_args, check_tasks_for_spec
from interventions.organism import organism_path
from interventions.model.processors import load_processor
from interventions.mechanism.spec import InterventionSpec, SteeringSpec, model_name
from interventions.mechanism.steer import read_vector_file
from interventions.versions import warn_untested_versions
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
        steer: str | None = None,
        steer_layer: int | None = None,
        steer_alpha: float | None = None,
        steer_positions: str = "all",
        config=None,
        processor=None,
        **kwargs,
    ) -> None:
        """`config`, `processor`: read from `pretrained` already (`modarb reproduce` checks its data with them
        before the weights load), used instead of reading them again."""
        warn_untested_versions()  # lm_eval's own CLI and the Python API start here, not in `modarb`
        check_model_args(kwargs, spec=spec, block=block, amplify=amplify, alpha=alpha, positions=positions)
        steering = dict(steer=steer, steer_layer=steer_layer, steer_alpha=steer_alpha, steer_positions=steer_positions)
        check_steer_args(spec=spec, **steering)
        if kwargs.get("device") is None:  # HFLM's own default is "cuda", even on a CPU-only machine
            kwargs["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        kwargs.setdefault("attn_implementation", DEFAULT_ATTENTION)
        if isinstance(pretrained, str):
            check_pretrained(pretrained, trust_remote_code=bool(kwargs.get("trust_remote_code")))
        self._read_config, self._read_processor = config, processor
        if config is not None:
            kwargs["config"] = config  # lm-eval hands the kwargs it does not know on to from_pretrained
        super().__init__(str(organism_path()) if pretrained is None else pretrained, **kwargs)
        # the analyses' rule too (interventions.model.encoding): Qwen's vision start/end, Gemma 3's begin-of-image
        self.image_token = image_string(self.config, self.tokenizer, kwargs.get("image_string"),
                                        int(kwargs["image_token_id"]) if kwargs.get("image_token_id") else None)
        alpha = DEFAULT_ALPHA if alpha is None else alpha
        self._prepared = prepare_model_args(self.model, spec=spec, block=block, amplify=amplify, alpha=alpha,
                                            positions=positions, **steering)
        self._model_fingerprint = weights_fingerprint(self.model)
        self.cache_path: str | None = None  # set by the scoped --use_cache wrapper (interventions/model/cache.py)

    @property
    def spec(self) -> InterventionSpec | None:
        """The spec every request runs under (None: the plain model)."""
        return None if self._prepared is None else self._prepared.spec

    @spec.setter
    def spec(self, spec: InterventionSpec | None) -> None:
        """Swap the spec of the loaded model (`modarb reproduce` does): checked and prepared here, once."""
        self._prepared = None if spec is None else prepare_spec(self.model, spec)

    def _create_tokenizer(self, pretrained, tokenizer, revision="main", trust_remote_code=False, **kwargs) -> None:
        """The stock processor loader, through `load_processor`: without torchvision the Qwen2-VL,
        Qwen2.5-VL, LLaVA-OneVision and SmolVLM processors fail AutoProcessor's video check."""
        name = pretrained if isinstance(pretrained, str) else self.model.name_or_path
        self.processor = self._read_processor or load_processor(name, trust_remote_code=bool(trust_remote_code),
                                                                revision=revision, **self.pixels)
        self.tokenizer = self.processor.tokenizer

    def _get_config(self, pretrained, **kwargs) -> None:
        """The config the caller read already, else lm-eval's own reading."""
        if self._read_config is None:
            super()._get_config(pretrained, **kwargs)
        else:
            self._config = self._read_config

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
            "modarb_attn_implementation": self.model.config.get_text_config()._attn_implementation,
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
        return _by_modality(requests, lambda subset: self._generate(subset, disable_tqdm or self.quiet))

    def _generate(self, requests: list[Instance], disable_tqdm: bool) -> list[str]:
        """Requests of one modality, batched as the stock loop batches them: grouped by generation
        arguments, longest prompt first, `batch_size` at a time."""
        images = _has_images(requests[0])
        batches = Collator(requests, sort_fn=lambda r: (-len(self.tok_encode(r.args[0])), r.args[0]),
                           group_by="gen_kwargs", group_fn=lambda r: r.args[1])
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        progress = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                        desc="generate_until (images)" if images else "generate_until (text)")
        answers = []
        for batch in batches.get_batched(n=self.batch_size):
            kwargs, until, max_new = self._generation_args(batch[0].args[1], images, eos)
            max_prompt = self.max_length - max_new
            if max_prompt < 1:
                raise ModarbError(f"max_gen_toks={max_new} leaves no room for the prompt in max_length={self.max_length}; "
                                  "lower max_gen_toks (the task's generation_kwargs or --gen_kwargs) or raise max_length=")
            visuals = [[resize_image(image, self.image_width, self.image_height, self.image_max_side)
                        for image in r.args[2]["visual"]] for r in batch] if images else None
            encoding, state = self._encode_batch([r.args[0] for r in batch], visuals, [r.doc for r in batch],
                                                 left_truncate_len=max_prompt, truncation=self.truncation,
                                                 generated=max_new)
            prompt_length = encoding["input_ids"].shape[1]
            max_length = kwargs.pop("max_length", prompt_length + max_new)
            with self._intervention(state):
                if images:
                    tokens = self._model_multimodal_generate(encoding, stop=until, max_length=max_length, **kwargs)
                else:
                    tokens = self._model_generate(context=encoding["input_ids"], attention_mask=encoding["attention_mask"],
                                                  stop=until, max_length=max_length, **kwargs)
            for request, row in zip(batch, tokens.tolist(), strict=True):
                answer = self._answer(row[prompt_length:], until, images)
                answers.append(answer)
                self.cache_hook.add_partial("generate_until", request.args[:2], answer)
                progress.update(1)
        progress.close()
        return batches.get_original(answers)

    def _generation_args(self, gen_kwargs: dict, images: bool, eos: str) -> tuple[dict, list[str], int]:
        """(generate() kwargs, stop sequences, max new tokens) from a request's gen_kwargs, read as the stock
        loop of its modality reads them: HFLM normalises them, HFMultimodalLM passes them on as given."""
        if images:
            kwargs = copy.deepcopy(gen_kwargs)
            max_new = kwargs.pop("max_gen_toks", self.max_gen_toks)
        else:
            kwargs = dict(normalize_gen_kwargs(gen_kwargs, self.max_gen_toks))
            max_new = kwargs.pop("max_gen_toks")
        return kwargs, handle_stop_sequences(kwargs.pop("until", None), eos=eos), max_new

    def _answer(self, tokens: list[int], until: list[str], images: bool) -> str:
        """The generated tokens as text, cut at the first stop sequence; text-only answers also lose
        the thinking before `think_end_token` (the stock text loop's rule; the multimodal one has none)."""
        think = None if images else self.think_end_token
        if isinstance(think, int):
            ends = [i for i, token in enumerate(tokens) if token == think]
            if ends:
                tokens = tokens[ends[-1] + 1 :]
            return postprocess_generated_text(self.tok_decode(tokens).lstrip(), until, None)
        return postprocess_generated_text(self.tok_decode(tokens), until, think)

    def tok_batch_multimodal_encode(self, strings, images, padding_side="left", left_truncate_len=None,
                                    truncation=False):
        """The model inputs of `strings` with `images`, as the analyses encode them (see `_encode`)."""
        return self._encode(strings, images, padding_side, left_truncate_len, truncation)[0]

    def _encode(self, strings, images, padding_side="left", left_truncate_len=None, truncation=False):
        """(processor output on the device, the texts the processor got): the stock encoder's steps
        through interventions.model.encoding, the function the analyses call."""
        encoding, texts = encode_multimodal(
            self.processor, getattr(self.config, "model_type", ""), strings, images, image_text=self.image_token,
            chat_applied=self.chat_applied, max_images=self.max_images, rgb=self.rgb, padding_side=padding_side,
            truncation=truncation,
        )
        encoding.to(self.device, self.model.dtype)
        if left_truncate_len:
            encoding["input_ids"] = encoding["input_ids"][:, -left_truncate_len:]
            encoding["attention_mask"] = encoding["attention_mask"][:, -left_truncate_len:]
        return encoding, texts

    def _encode_batch(self, strings: list[str], visuals: list[list] | None, docs: list[dict | None],
                      left_truncate_len: int | None = None, truncation: bool = False,
                      answer_lengths: list[int] | None = None, generated: int = 0):
        """(model inputs, BatchState) of one batch: `visuals` None for text-only rows (the tokenizer alone,
        as the stock text loop encodes them); `answer_lengths` (scored continuations ending each row) or
        `generated` (tokens generate() will add) place the answer positions of a positions=last spec."""
        if visuals is None:
            input_ids, attention_mask = self.tok_batch_encode(strings, left_truncate_len=left_truncate_len,
                                                              truncation=truncation)
            encoding = {"input_ids": input_ids.to(self.device), "attention_mask": attention_mask.to(self.device)}
            texts = strings
        else:
            encoding, texts = self._encode(strings, visuals, left_truncate_len=left_truncate_len, truncation=truncation)
        answer = None
        if self._prepared is not None and self._prepared.spec.needs_answer_positions():
            answer = answer_positions(encoding["attention_mask"], answer_lengths, generated)
        return encoding, BatchState(docs=tuple(docs), token_groups=self._groups(encoding, texts, docs), answer=answer)

    # --- likelihood with images -------------------------------------------------------------
    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        disable_tqdm = disable_tqdm or self.quiet
        parent = super().loglikelihood
        return _by_modality(
            requests,
            lambda subset: self._image_loglikelihood(subset, disable_tqdm)
            if _has_images(subset[0])
            else parent(subset, disable_tqdm=disable_tqdm),
        )

    def _model_call(self, inps, attn_mask=None, labels=None):
        """One batch of the stock text-only scoring loops. They encode request by request and build no
        token groups, so a spec that needs them is refused rather than given masks of another batch; so is
        positions=last, whose answer positions (where each continuation starts) these loops do not expose."""
        if self._prepared is not None and self._prepared.groups_needed:
            raise ModarbError(
                f"spec {self.spec.identity()} needs token groups {sorted(self.spec.groups_needed())}, which hf-modarb "
                "builds for generation and image loglikelihood only; use positions=all for text-only loglikelihood tasks"
            )
        if self._prepared is not None and self.spec.needs_answer_positions():
            raise ModarbError(
                f"spec {self.spec.identity()} acts at the answer positions (positions=last), which hf-modarb "
                "finds for generation and image loglikelihood only; use positions=all for text-only loglikelihood tasks"
            )
        with self._intervention(None):
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

    def _image_loglikelihood(self, requests: list[Instance], disable_tqdm: bool) -> list[tuple[float, bool]]:
        """Score each continuation after its context+image: one processor call and forward per batch."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i].args[0] + requests[i].args[1]))
        progress = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="loglikelihood (images)")
        for start in range(0, len(order), self.batch_size):
            batch = [requests[i] for i in order[start : start + self.batch_size]]
            pairs = [_split_trailing_space(*request.args[:2]) for request in batch]
            strings = [context + continuation for context, continuation in pairs]
            visuals = [list(request.args[2]["visual"]) for request in batch]
            lengths = [self._continuation_length(context, continuation) for context, continuation in pairs]
            encoding, state = self._encode_batch(strings, visuals, [request.doc for request in batch],
                                                 answer_lengths=lengths)
            with torch.no_grad(), self._intervention(state):
                logits = self.model(**encoding).logits
            log_probs = F.log_softmax(logits.float(), dim=-1)
            for row, index in enumerate(order[start : start + self.batch_size]):
                length = lengths[row]
                targets = encoding["input_ids"][row, -length:]
                scores = log_probs[row, -length - 1 : -1]
                picked = scores.gather(-1, targets[:, None]).squeeze(-1)
                results[index] = (float(picked.sum()), bool((scores.argmax(-1) == targets).all()))
            progress.update(len(batch))
        progress.close()
        return results

    def _continuation_length(self, context: str, continuation: str) -> int:
        """How many tokens `continuation` adds to `context` (ModarbError when none)."""
        length = len(self.tok_encode(context + continuation)) - len(self.tok_encode(context))
        if length < 1:
            raise ModarbError(f"continuation {continuation!r} adds no tokens to its context; check the task's choices")
        return length

    # --- the intervention around one batch ---------------------------------------------------
    def _groups(self, encoding, texts: Sequence[str], docs: Sequence[dict | None]) -> dict[str, torch.Tensor] | None:
        """Token-group masks for the batch (`texts`: what the processor got), built only when the spec needs them."""
        if self._prepared is None or not self._prepared.groups_needed:
            return None
        missing = next((i for i, doc in enumerate(docs) if not doc or "spans" not in doc or "prompt" not in doc), None)
        if missing is not None:
            raise ModarbError(
                f"spec {self.spec.identity()} needs token groups {sorted(self.spec.groups_needed())}, but the task's docs "
                "record no prompt spans; run it on a modarb task (they record them)"
            )
        return doc_token_groups(encoding, texts, docs, self.tokenizer, image_token_id(self.model.config))

    def _intervention(self, batch: BatchState | None):
        """The prepared spec's hooks for one batch (`batch` None: a batch without token groups)."""
        return nullcontext() if self._prepared is None else apply_prepared(self._prepared, batch)


def prepare_model_args(
    model, *, spec: str | None, block: str | None, amplify: str | None, alpha: float, positions: str,
    steer: str | None = None, steer_layer: int | None = None, steer_alpha: float | None = None,
    steer_positions: str = "all",
) -> PreparedSpec | None:
    """The spec from `spec=` (a JSON file) or the inline args (checked by check_model_args and
    check_steer_args), prepared for `model`: its heads located and the spec validated against it, once."""
    if spec:
        loaded, layout = InterventionSpec.load(spec), locate_heads(model)
    elif block or amplify or steer:
        layout = locate_heads(model)
        loaded = InterventionSpec.from_inline(model=model, block=block, amplify=amplify, alpha=alpha,
                                              positions=positions, layout=layout)
        if steer:
            steering = SteeringSpec(layers=(steer_layer,), alpha=float(steer_alpha), data=read_vector_file(steer),
                                    positions=steer_positions)
            command = f"steer={steer},steer_layer={steer_layer},steer_alpha={steer_alpha},steer_positions={steer_positions}"
            provenance = dict(loaded.provenance, command=",".join(filter(None, [loaded.provenance["command"], command])))
            loaded = replace(loaded, steering=steering, provenance=provenance)
    else:
        return None
    return prepare_spec(model, loaded, layout)


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
    if spec.steering is not None:
        layers = ",".join(map(str, spec.steering.layers))
        parts.append(f"steer L{layers} x{spec.steering.alpha:g} at {spec.steering.positions}")
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
