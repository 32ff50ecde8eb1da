"""Typed options of one case: what a (possibly separate) process needs to run it.

A ``CaseRequest`` crosses the process boundary as JSON (``request_to_json`` /
``request_from_json``), so every field is a plain value or a frozen dataclass
of plain values.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from harness.core.types import Precision


@dataclass(frozen=True)
class MeasureOptions:
    """How a passing case is timed (``harness.run.timing``) and which batch sizes are swept.

    ``min_time_s``, ``min_iterations`` and ``max_samples`` are totals over the ``trials``: each trial
    gets an equal share, and the trials of one case are interleaved with its batch sizes, so slow
    drift of a shared machine spreads over all of them instead of biasing one.
    """

    min_time_s: float = 1.0
    min_iterations: int = 15
    warmup: int = 3
    max_samples: int = 1500
    cv_threshold: float = 0.1
    batches: tuple[int, ...] | None = None
    """Throughput sweep batch sizes; None = batch 1 and the model's declared sizes; () = no sweep."""
    trials: int = 3
    """Independent timed loops per batch size; their medians are ``latency['trials_p50_ms']``."""
    isolated: bool = True
    """Run the case alone in a fresh child process (perf suite, ``--bench``); False (``quick``): the latency
    of a conformance case, measured in the shared child right after its verdict."""

    def __post_init__(self) -> None:
        if self.trials < 1 or self.min_iterations < 1:
            raise ValueError(f"MeasureOptions needs trials >= 1 and min_iterations >= 1; got trials={self.trials}, "
                             f"min_iterations={self.min_iterations}")

    @classmethod
    def quick(cls, **changes: Any) -> MeasureOptions:
        """Every passing conformance case: 3 trials, 0.3 s and at least 15 calls in total, no sweep."""
        return cls(**{"min_time_s": 0.3, "min_iterations": 15, "warmup": 2, "max_samples": 600, "batches": (),
                      "isolated": False, **changes})

    @classmethod
    def standard(cls, **changes: Any) -> MeasureOptions:
        """The perf suite's default: alone in a fresh child, 3 trials, 1 s and at least 15 calls in total."""
        return cls(**changes)

    @classmethod
    def bench(cls, **changes: Any) -> MeasureOptions:
        """``--bench``: alone in a fresh child, 5 trials, 5 s and at least 50 calls after 10 warm-up calls."""
        return cls(**{"min_time_s": 5.0, "min_iterations": 50, "warmup": 10, "max_samples": 5000, "trials": 5,
                      **changes})

    def timing_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``timing.measure`` for ONE trial (the totals divided by ``trials``)."""
        return {"min_time_s": self.min_time_s / self.trials, "min_iterations": -(-self.min_iterations // self.trials),
                "warmup": self.warmup, "max_samples": max(self.max_samples // self.trials, 1),
                "cv_threshold": self.cv_threshold}


@dataclass(frozen=True)
class ExportOptions:
    """Overrides of the model's own export settings (the export suite sweeps these)."""

    exporter: str | None = None
    opset: int | None = None


@dataclass(frozen=True)
class CaseRequest:
    """Everything a (possibly separate) process needs to run one case."""

    model: str
    backend: str
    precision: Precision
    run_id: str = "adhoc"
    suite: str = "conformance"
    threads: int | None = None
    device: str = "cpu"
    zoo_files: tuple[str, ...] = ()
    measure: MeasureOptions | None = None
    """Timing options of a passing case; None = verdict only."""
    test_id: str = ""
    export: ExportOptions = field(default_factory=ExportOptions)
    accuracy: bool = False
    """Also evaluate the model's task metric (``ModelSpec.evaluate``) on the built session."""

    @property
    def case_id(self) -> str:
        """``model-backend-precision``."""
        return f"{self.model}-{self.backend}-{self.precision.value}"


def request_to_json(req: CaseRequest) -> str:
    """Serialize a CaseRequest (Precision is a str enum; tuples become lists)."""
    return json.dumps(dataclasses.asdict(req))


def request_from_json(text: str) -> CaseRequest:
    """Inverse of ``request_to_json``."""
    data = json.loads(text)
    data["precision"] = Precision(data["precision"])
    data["zoo_files"] = tuple(data.get("zoo_files", ()))
    if data.get("measure") is not None:
        m = data["measure"]
        data["measure"] = MeasureOptions(**{**m, "batches": tuple(m["batches"]) if m.get("batches") is not None
                                            else None})
    data["export"] = ExportOptions(**data.get("export", {}))
    return CaseRequest(**data)
