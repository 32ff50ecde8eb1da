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
        return json.dumps(_jsonable(dataclasses.asdict(self)), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        """Build from a parsed line; unknown keys (newer schema) go to ``extra``."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        unknown = {k: v for k, v in data.items() if k not in names}
        if unknown:
            known["extra"] = {**known.get("extra", {}), **unknown}
        return cls(**known)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    return value
