"""lm-eval's request cache (`--use_cache PATH`), keyed by everything that changes an answer.

lm-eval 0.4.13 keys a cached request by the request alone (text, generation arguments, image
content): a run under one intervention spec would read the answers of a run under another,
or of another model. `ScopedCachingLM` stands in for lm-eval's `CachingLM` during a run (put
there by `interventions.model.lm_eval_adapter`) and prefixes every key with a *scope*: the
model's fingerprint (its path, revision, dtype, the config and the weight files' sizes and
times) and, for `hf-modarb`, the spec's identity. The same spec on the same model still
resumes from the cache. Values are stored as JSON, never pickled (lm-eval's default).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from lm_eval.api.model import CachingLM
from sqlitedict import SqliteDict

SCOPE_SCHEMA = "modarb.cache-scope/v1"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def weights_fingerprint(model) -> dict[str, Any]:
    """What identifies a loaded transformers model's answers: where it came from and what it is."""
    config = getattr(model, "config", None)
    name = str(getattr(model, "name_or_path", "") or getattr(config, "_name_or_path", ""))
    fingerprint: dict[str, Any] = {
        "name_or_path": name,
        "revision": getattr(config, "_commit_hash", None),
        "dtype": str(getattr(model, "dtype", "")),
        "config_sha256": _sha256(config.to_json_string(use_diff=False)) if config is not None else None,
    }
    folder = Path(name)
    if name and folder.is_dir():
        fingerprint["path"] = str(folder.resolve())
        fingerprint["weights"] = sorted(
            [file.name, stat.st_size, stat.st_mtime_ns]
            for file in folder.iterdir()
            if file.suffix in WEIGHT_SUFFIXES and (stat := file.stat())
        )
    return fingerprint


def cache_scope(lm) -> dict[str, Any]:
    """The scope of `lm`'s cached answers: its own `cache_scope()` (hf-modarb), else its model's fingerprint."""
    if hasattr(lm, "cache_scope"):
        return lm.cache_scope()
    return {"lm": type(lm).__name__, "model": weights_fingerprint(getattr(lm, "model", None))}


def scope_id(scope: dict[str, Any]) -> str:
    return _sha256(json.dumps({"schema": SCOPE_SCHEMA, **scope}, sort_keys=True, default=str))


class ScopedStore:
    """A SqliteDict seen through key = sha256(scope id + lm-eval's request hash); the scope is read per
    access, so swapping the spec of one loaded model (as `modarb reproduce` does) moves to another scope."""

    def __init__(self, table, lm) -> None:
        self.table = table
        self.lm = lm

    def _key(self, request_hash: str) -> str:
        return _sha256(scope_id(cache_scope(self.lm)) + request_hash)

    def __contains__(self, request_hash: str) -> bool:
        return self._key(request_hash) in self.table

    def __getitem__(self, request_hash: str):
        return self.table[self._key(request_hash)]

    def __setitem__(self, request_hash: str, value) -> None:
        self.table[self._key(request_hash)] = value

    def commit(self) -> None:
        self.table.commit()


class ScopedCachingLM(CachingLM):
    """CachingLM with the scoped, JSON-valued store; what `lm` records of it goes into the results' config."""

    _modarb = True

    def __init__(self, lm, cache_db: str) -> None:
        self.lm = lm
        self.cache_db = cache_db
        if os.path.dirname(cache_db):
            os.makedirs(os.path.dirname(cache_db), exist_ok=True)
        table = SqliteDict(cache_db, tablename="modarb_scoped", autocommit=True, encode=json.dumps, decode=json.loads)
        self.dbdict = ScopedStore(table, lm)
        lm.set_cache_hook(self.get_cache_hook())
        lm.cache_path = cache_db


def cache_record(lm) -> dict[str, Any] | None:
    """For the results JSON: the cache file `lm` answers from (None: no cache) and the scope of its keys."""
    path = getattr(lm, "cache_path", None)
    if path is None:
        return None
    scope = cache_scope(lm)
    return {"path": path, "key_scope": sorted(scope), "scope_id": scope_id(scope), "scope": scope}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
