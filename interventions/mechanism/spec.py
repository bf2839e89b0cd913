"""Intervention specs: a versioned, schema-validated JSON document naming the model it was made for.

A spec is data (never pickle): which heads to scale and by how much, which attention edges to
knock out at which layers, the position scope, a residual steering vector (stored beside the spec
as safetensors, referenced by relative path and sha256), and how the spec was made (provenance). It
names the model it was made for (name and head geometry) so that applying it to another model
fails with one line instead of silently hitting the wrong heads. Every error here is a single
line naming the problem and the fix.

Versions: v2 adds `steering`; v1 is v2 without it and is read unchanged. A spec without steering
is still written as v1, so its identity (a hash of the document) and existing specs stay as they are.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import jsonschema
import torch
from torch import nn

from modarb_tasks.files import write_atomic, write_json
from interventions.mechanism.locate import HeadLayout, InterventionError, locate_heads
from interventions.organism import ORGANISM_DIR, ORGANISM_NAME
from interventions.mechanism.token_groups import GROUP_NAMES
from interventions.mechanism.steer import (
    check_alpha, check_vector, hidden_size, parse_vector, read_vector_file, sha256, vector_bytes)

SCHEMA_VERSION = "modarb.intervention/v2"
SCHEMA_V1 = "modarb.intervention/v1"  # v2 without steering: read as is, and still written for such specs
MAX_SPEC_BYTES = 4 * 1024 * 1024  # every head of a 100-layer x 100-head model with a long provenance fits
POSITION_SCOPES = ("all", "last", *GROUP_NAMES)

_INT = {"type": "integer", "minimum": 0}
_GROUP = {"type": "string"}
JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["schema", "model", "heads", "positions", "knockout", "provenance"],
    "additionalProperties": False,
    "properties": {
        "schema": {"enum": [SCHEMA_V1, SCHEMA_VERSION]},
        "model": {
            "type": "object",
            "required": ["name", "family", "num_layers", "num_heads", "head_dim"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "family": {"type": "string"},
                "num_layers": {"type": "integer", "minimum": 1},
                "num_heads": {"type": "integer", "minimum": 1},
                "head_dim": {"type": "integer", "minimum": 1},
            },
        },
        "heads": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["layer", "head", "scale"],
                "additionalProperties": False,
                "properties": {"layer": _INT, "head": _INT, "scale": {"type": "number"}},
            },
        },
        "positions": _GROUP,
        "knockout": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["edges", "layers"],
                    "additionalProperties": False,
                    "properties": {
                        "edges": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["query", "key"],
                                "additionalProperties": False,
                                "properties": {"query": _GROUP, "key": _GROUP},
                            },
                        },
                        "layers": {"type": "array", "items": _INT},
                        "heads": {"oneOf": [{"type": "null"}, {"type": "array", "items": _INT}]},
                    },
                },
            ]
        },
        "provenance": {"type": "object"},
        "steering": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["layers", "alpha", "positions", "vector"],
                    "additionalProperties": False,
                    "properties": {
                        "layers": {"type": "array", "items": _INT, "minItems": 1},
                        "alpha": {"type": "number"},
                        "positions": _GROUP,
                        "vector": {
                            "type": "object",
                            "required": ["path", "sha256"],
                            "additionalProperties": False,
                            "properties": {"path": {"type": "string", "minLength": 1},
                                           "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
                        },
                    },
                },
            ]
        },
    },
    "if": {"properties": {"schema": {"const": SCHEMA_V1}}},
    "then": {"not": {"required": ["steering"]}},
}


class SpecError(InterventionError):
    """An intervention spec that cannot be read or does not fit the model."""


class SpecNotFoundError(SpecError):
    """The spec file does not exist (bad input like any other spec error: one line, exit 2)."""


@dataclass(frozen=True)
class ModelFingerprint:
    """What a spec's head indices mean: the model's name and decoder head geometry."""

    name: str
    family: str
    num_layers: int
    num_heads: int
    head_dim: int

    def describe(self) -> str:
        name = self.name or "an unnamed model"
        return f"{name} ({self.family}, {self.num_layers} layers x {self.num_heads} heads of {self.head_dim})"


@dataclass(frozen=True)
class HeadScale:
    layer: int
    head: int
    scale: float


@dataclass(frozen=True)
class KnockoutSpec:
    edges: tuple[tuple[str, str], ...]  # (query group, key group)
    layers: tuple[int, ...]
    heads: tuple[int, ...] | None = None


@dataclass(frozen=True)
class SteeringSpec:
    """alpha * vector added to the output of decoder `layers` at `positions`; `data` is the vector's
    safetensors file (its sha256 names the vector), `path` where it lies relative to the spec."""

    layers: tuple[int, ...]
    alpha: float
    data: bytes = field(repr=False)
    positions: str = "all"
    path: str = ""

    def __post_init__(self) -> None:
        check_alpha(self.alpha)
        check_vector(self.vector)

    @classmethod
    def of(cls, vector: torch.Tensor, layers, alpha: float, positions: str = "all") -> SteeringSpec:
        """Steering by an in-memory vector (stored as float32 when the spec is saved)."""
        check_vector(vector)
        return cls(layers=tuple(int(layer) for layer in layers), alpha=float(alpha), data=vector_bytes(vector),
                   positions=positions)

    @property
    def vector(self) -> torch.Tensor:
        return parse_vector(self.data, "steering vector")

    @property
    def sha256(self) -> str:
        return sha256(self.data)


def model_fingerprint(model: nn.Module, layout: HeadLayout | None = None) -> ModelFingerprint:
    """The fingerprint of `model`: name from its config's name_or_path, geometry from its decoder
    (`layout`: its heads, when the caller has located them already).

    The bundled organism is named `modarb-organism`, not by the folder it is installed in.
    """
    layout = locate_heads(model) if layout is None else layout
    return ModelFingerprint(
        name=model_name(model),
        family=layout.family,
        num_layers=layout.num_layers,
        num_heads=layout.num_heads,
        head_dim=layout.head_dim,
    )


@dataclass(frozen=True)
class InterventionSpec:
    """Head scales + knockout + position scope + steering for one model, with its provenance."""

    model: ModelFingerprint
    heads: tuple[HeadScale, ...] = ()
    positions: str = "all"
    knockout: KnockoutSpec | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    steering: SteeringSpec | None = None

    def __post_init__(self) -> None:
        _check_content(self)

    @classmethod
    def scaling(cls, fingerprint: ModelFingerprint, heads, scale: float, provenance: dict) -> InterventionSpec:
        """Every head in `heads` ((layer, head) pairs) scaled by `scale` (0: blocked) at every position."""
        return cls(model=fingerprint, heads=tuple(HeadScale(int(layer), int(head), float(scale)) for layer, head in heads),
                   provenance=dict(provenance))

    # --- reading and writing -------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> InterventionSpec:
        path = Path(path)
        if not path.is_file():
            raise SpecNotFoundError(f"spec file {path} does not exist; write one with `save` or check the path")
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise SpecError(f"spec {path} is {path.stat().st_size:,} bytes, more than a spec needs "
                            f"({MAX_SPEC_BYTES:,} at most); check that it is an intervention spec")
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except RecursionError:
            raise SpecError(f"spec {path}: JSON nested too deeply to be a spec; check that it is an intervention "
                            "spec") from None
        except json.JSONDecodeError as err:
            raise SpecError(f"spec {path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
        except UnicodeDecodeError:
            raise SpecError(f"spec {path}: not valid JSON (not UTF-8 text)") from None
        try:
            return cls.from_dict(document, base=path.parent)
        except InterventionError as err:
            raise SpecError(f"spec {path}: {err}") from None

    @classmethod
    def from_dict(cls, document: Any, base: Path | None = None) -> InterventionSpec:
        """The spec in `document`; `base`: the folder a steering vector's path is relative to (the spec's)."""
        version = document.get("schema") if isinstance(document, dict) else None
        if version not in (SCHEMA_V1, SCHEMA_VERSION):
            raise SpecError(f"unknown schema version {version!r}; this modarb reads {SCHEMA_V1!r} and {SCHEMA_VERSION!r}")
        try:
            jsonschema.validate(document, JSON_SCHEMA)
        except jsonschema.ValidationError as err:
            where = "/".join(str(part) for part in err.absolute_path) or "document"
            raise SpecError(f"{where}: {err.message.splitlines()[0]}") from None
        knockout = document["knockout"]
        return cls(
            model=ModelFingerprint(**document["model"]),
            heads=tuple(HeadScale(h["layer"], h["head"], float(h["scale"])) for h in document["heads"]),
            positions=document["positions"],
            knockout=None
            if knockout is None
            else KnockoutSpec(
                edges=tuple((edge["query"], edge["key"]) for edge in knockout["edges"]),
                layers=tuple(knockout["layers"]),
                heads=None if knockout.get("heads") is None else tuple(knockout["heads"]),
            ),
            provenance=dict(document["provenance"]),
            steering=_read_steering(document.get("steering"), base),
        )

    def to_dict(self) -> dict[str, Any]:
        knockout = self.knockout
        document = {
            "schema": SCHEMA_V1 if self.steering is None else SCHEMA_VERSION,
            "model": asdict(self.model),
            "heads": [asdict(h) for h in self.heads],
            "positions": self.positions,
            "knockout": None
            if knockout is None
            else {
                "edges": [{"query": q, "key": k} for q, k in knockout.edges],
                "layers": list(knockout.layers),
                "heads": None if knockout.heads is None else list(knockout.heads),
            },
            "provenance": self.provenance,
        }
        steering = self.steering
        if steering is not None:
            document["steering"] = {
                "layers": list(steering.layers),
                "alpha": steering.alpha,
                "positions": steering.positions,
                "vector": {"path": steering.path, "sha256": steering.sha256},
            }
        return document

    def save(self, path: str | os.PathLike) -> Path:
        """Write the spec as JSON atomically (a crash never leaves a half-written spec); a steering
        vector goes first, beside it, as `<spec name>.safetensors`."""
        path = Path(path)
        spec = self
        if self.steering is not None:
            vector = path.with_suffix(".safetensors")
            write_atomic(vector, self.steering.data)
            spec = replace(self, steering=replace(self.steering, path=vector.name))
        return write_json(path, spec.to_dict())

    # --- use ------------------------------------------------------------------------------
    def scales(self) -> dict[tuple[int, int], float]:
        return {(h.layer, h.head): h.scale for h in self.heads}

    def identity(self) -> str:
        """A short hash of what the spec does and which model it is for (provenance excluded)."""
        content = self.to_dict()
        del content["provenance"]
        if content.get("steering"):
            del content["steering"]["vector"]["path"]  # where the vector lies does not change what it does
        content["heads"] = sorted(content["heads"], key=lambda h: (h["layer"], h["head"]))
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def groups_needed(self) -> set[str]:
        """Token groups the caller must supply masks for ("all" and "last" scopes need none)."""
        needed = {self.positions} - {"all", "last"} if self.heads else set()
        for query, key in self.knockout.edges if self.knockout else ():
            needed |= {query, key}
        if self.steering is not None:
            needed |= {self.steering.positions} - {"all", "last"}
        return needed

    def needs_answer_positions(self) -> bool:
        """Whether a batch must supply its answer positions (a positions="last" scope of heads or steering)."""
        return (bool(self.heads) and self.positions == "last") or (
            self.steering is not None and self.steering.positions == "last")

    def validate_against(self, model: nn.Module, layout: HeadLayout | None = None) -> None:
        """SpecError unless the spec was made for `model` (same geometry and family; same name when both have one);
        `layout`: the model's heads, when the caller has located them already."""
        actual = model_fingerprint(model, layout)
        expected = self.model
        same_geometry = (expected.family, expected.num_layers, expected.num_heads, expected.head_dim) == (
            actual.family,
            actual.num_layers,
            actual.num_heads,
            actual.head_dim,
        )
        same_name = not (expected.name and actual.name) or _short_name(expected.name) == _short_name(actual.name)
        if not (same_geometry and same_name):
            raise SpecError(
                f"spec was made for {expected.describe()} but the model is {actual.describe()}; "
                "make a spec for this model"
            )
        if self.steering is not None:
            try:
                check_vector(self.steering.vector, hidden_size(model))
            except InterventionError as err:
                raise SpecError(str(err)) from None

    @classmethod
    def from_inline(
        cls,
        *,
        model: nn.Module,
        block: str | None = None,
        amplify: str | None = None,
        alpha: float = 1.0,
        positions: str = "all",
        layout: HeadLayout | None = None,
    ) -> InterventionSpec:
        """A spec from lm-eval style model args: block="L3H1;L5H7", amplify="L2H0", alpha=2.0
        (`layout`: the model's heads, when the caller has located them already)."""
        alpha = float(alpha)
        if not (math.isfinite(alpha) and alpha >= 0):
            raise SpecError(f"alpha={alpha} must be a finite number >= 0")
        blocked = _parse_heads("block", block)
        amplified = _parse_heads("amplify", amplify)
        both = sorted(set(blocked) & set(amplified))
        if both:
            raise SpecError(f"head L{both[0][0]}H{both[0][1]} is both blocked and amplified; choose one")
        heads = [HeadScale(l, h, 0.0) for l, h in blocked] + [HeadScale(l, h, alpha) for l, h in amplified]
        args = ",".join(f"{k}={v}" for k, v in (("block", block), ("amplify", amplify)) if v)
        return cls(
            model=model_fingerprint(model, layout),
            heads=tuple(heads),
            positions=positions,
            provenance={"method": "inline", "command": f"{args},alpha={alpha}" if amplified else args},
        )


_HEAD_PATTERN = re.compile(r"L(\d+)H(\d+)")


def _parse_heads(arg: str, text: str | None) -> list[tuple[int, int]]:
    heads = []
    for token in (text or "").split(";"):
        token = token.strip()
        if not token:
            continue
        match = _HEAD_PATTERN.fullmatch(token)
        if not match:
            raise SpecError(f"cannot read head {token!r} in {arg}=: write heads as L<layer>H<head> separated by ';'")
        heads.append((int(match[1]), int(match[2])))
    return heads


def model_name(model: nn.Module) -> str:
    """The model's name_or_path, or ORGANISM_NAME for the bundled organism wherever it is installed."""
    name = str(getattr(model.config, "_name_or_path", "") or "")
    if name and Path(name).resolve() == ORGANISM_DIR:
        return ORGANISM_NAME
    return name


def _short_name(name: str) -> str:
    """The last path component: a hub id and a local copy of it compare equal."""
    return name.rstrip("/").rsplit("/", 1)[-1]


def _check_content(spec: InterventionSpec) -> None:
    """Ranges, scales and group names, checked against the spec's own model fingerprint."""
    model = spec.model
    seen: set[tuple[int, int]] = set()
    for h in spec.heads:
        if (h.layer, h.head) in seen:
            raise SpecError(f"head L{h.layer}H{h.head} is listed twice; give each head one scale")
        seen.add((h.layer, h.head))
        _check_layer(h.layer, model)
        if not 0 <= h.head < model.num_heads:
            raise SpecError(f"head L{h.layer}H{h.head} is out of range: the model has heads 0..{model.num_heads - 1}")
        if not (math.isfinite(h.scale) and h.scale >= 0):
            raise SpecError(f"scale {h.scale} of head L{h.layer}H{h.head} must be a finite number >= 0")
    _check_group(spec.positions, POSITION_SCOPES)
    if spec.steering is not None:
        for layer in spec.steering.layers:
            _check_layer(layer, model)
        _check_group(spec.steering.positions, POSITION_SCOPES)
    if spec.knockout is not None:
        for query, key in spec.knockout.edges:
            _check_group(query, GROUP_NAMES)
            _check_group(key, GROUP_NAMES)
        for layer in spec.knockout.layers:
            _check_layer(layer, model)
        for head in spec.knockout.heads or ():
            if not 0 <= head < model.num_heads:
                raise SpecError(f"knockout head {head} is out of range: the model has heads 0..{model.num_heads - 1}")
        if not (spec.knockout.edges and spec.knockout.layers and spec.knockout.heads != ()):
            missing = "edges" if not spec.knockout.edges else "layers" if not spec.knockout.layers else "heads"
            raise SpecError(f"knockout has no {missing}, so it would change nothing; give {missing} or set knockout to null")


def _read_steering(document: dict | None, base: Path | None) -> SteeringSpec | None:
    """The steering part of a spec document, its vector read from `base` and checked against its sha256."""
    if document is None:
        return None
    if base is None:
        raise SpecError("a spec with steering is read from its file (its vector lies beside it); use InterventionSpec.load")
    vector = document["vector"]
    data = read_vector_file(base / vector["path"], vector["sha256"])
    return SteeringSpec(layers=tuple(document["layers"]), alpha=float(document["alpha"]), data=data,
                        positions=document["positions"], path=vector["path"])


def _check_layer(layer: int, model: ModelFingerprint) -> None:
    if not 0 <= layer < model.num_layers:
        raise SpecError(f"layer {layer} is out of range: the model has layers 0..{model.num_layers - 1}")


def _check_group(name: str, allowed: tuple[str, ...]) -> None:
    if name not in allowed:
        raise SpecError(f"unknown token group {name!r}; choose one of {', '.join(dict.fromkeys(allowed))}")
