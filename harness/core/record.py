"""The Record: the outcome of one case, one line of ``records.jsonl``."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2
"""2: ``cause`` added (records of schema 1 read with an empty cause)."""


@dataclass(frozen=True)
class Record:
    """The outcome of one case (model x backend x precision in one suite)."""

    run_id: str
    model: str
    backend: str
    precision: str
    status: str
    suite: str = "conformance"
    reason: str = ""
    cause: str = ""
    detail: str = ""
    """The full engine output behind a shortened ``reason`` (tracebacks, long lists); empty when none."""
    """``engine``, ``model``, ``harness`` or ``environment`` for every record that is not a pass (``Cause``)."""
    executed_precision: str = ""
    precision_match: str = ""  # exact | partial | fallback | "" (not built)
    metrics: dict[str, float] = field(default_factory=dict)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    input_sets: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    backend_version: str = ""
    artifact: str | None = None
    artifact_mb: float | None = None
    export: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    latency: dict[str, Any] | None = None
    throughput: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_mb: float | None = None
    accuracy: float | None = None
    known_failure: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    test_id: str = ""
    machine_id: str = ""
    started_at: float = 0.0
    duration_s: float = 0.0
    schema: int = SCHEMA_VERSION

    @property
    def case_id(self) -> str:
        """``model-backend-precision``, the pytest id of the case."""
        return f"{self.model}-{self.backend}-{self.precision}"

    def to_json(self) -> str:
        """One JSON line (non-finite floats become strings so the line stays valid JSON)."""
        fields = {f.name: getattr(self, f.name) for f in _FIELDS}
        try:  # C speed for the usual record; one with a non-finite float or an odd key takes the Python walk
            return json.dumps(fields, sort_keys=True, allow_nan=False, default=_json_default)
        except (ValueError, TypeError):
            return json.dumps(_jsonable(fields), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        """Build from a parsed line; unknown keys (newer schema) go to ``extra``.

        Raises TypeError naming the field when the line is not an object, lacks an identifying field or
        holds a field of the wrong JSON type (``"latency": "fast"``): readers skip such a line.
        """
        if not isinstance(data, dict):
            raise TypeError(f"a record is a JSON object, got a JSON {json_type(data)}")
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        unknown = {k: v for k, v in data.items() if k not in names}
        for key, value in known.items():
            _check_field(key, value)
        missing = [k for k in _REQUIRED if k not in known]
        if missing:
            raise TypeError(f"record lacks {', '.join(missing)}")
        if unknown:
            known["extra"] = {**known.get("extra", {}), **unknown}
        return cls(**known)


_FIELDS = dataclasses.fields(Record)
_REQUIRED = ("run_id", "model", "backend", "precision", "status")
_KINDS: dict[str, tuple[type, ...]] = {
    "string": (str,), "object": (dict,), "array": (list,), "number": (int, float, str), "integer": (int,),
}
# The JSON type each field may hold when read back (None is accepted where the field is optional);
# numbers may be strings because non-finite floats are written as "nan"/"inf".
_FIELD_KINDS = {
    **dict.fromkeys(("run_id", "model", "backend", "precision", "status", "suite", "reason", "cause",
                     "executed_precision", "precision_match", "backend_version", "test_id", "machine_id"), "string"),
    **dict.fromkeys(("metrics", "settings", "export", "timings_s", "extra"), "object"),
    **dict.fromkeys(("outputs", "input_sets", "throughput"), "array"),
    **dict.fromkeys(("started_at", "duration_s"), "number"),
    "schema": "integer",
}
_OPTIONAL_KINDS = {"artifact": "string", "artifact_mb": "number", "latency": "object", "peak_rss_mb": "number",
                   "accuracy": "number", "known_failure": "object"}


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (for messages about odd lines)."""
    names = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "array",
             dict: "object"}
    return names.get(type(value), type(value).__name__)


def _check_field(key: str, value: Any) -> None:
    kind = _FIELD_KINDS.get(key) or _OPTIONAL_KINDS.get(key)
    if kind is None or (value is None and key in _OPTIONAL_KINDS):
        return
    if isinstance(value, bool) or not isinstance(value, _KINDS[kind]):
        raise TypeError(f"field {key!r} must be a JSON {kind}, got a JSON {json_type(value)}: {str(value)[:40]!r}")
    if kind == "number":
        try:
            float(value)  # a 400-digit integer overflows; "fast" is no number
        except (ValueError, OverflowError) as exc:
            raise TypeError(f"field {key!r} is not a usable number: {str(value)[:40]!r} ({exc})") from None


def _json_default(value: Any) -> Any:
    """What ``json.dumps`` cannot write itself (paths, dataclasses, numpy scalars), converted as ``_jsonable``
    does."""
    converted = _jsonable(value)
    if converted is value:
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")
    return converted


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # to_json no longer uses asdict
        return _jsonable(dataclasses.asdict(value))
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    return value
