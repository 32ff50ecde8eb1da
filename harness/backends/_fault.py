"""Fault-injecting backends for the harness's own tests (hidden: never part of a sweep).

They stand in for an engine that segfaults, aborts, hangs or returns NaN, so the
worker's crash/timeout handling and the verdicts can be tested for real. They
run the model through PyTorch (no ONNX export) and then misbehave as told by
``HARNESS_FAULT`` (``<kind>@<phase>``, e.g. ``segv@run``, ``abort@load``);
``_fault_alloc`` holds ``HARNESS_FAULT_ALLOC_MB`` (default 200) of touched
memory for the life of the session (memory-measurement tests).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from harness.backends.base import Backend, BoundCall, Session
from harness.core.types import Feeds, Precision
from harness.model.reference import run_torch

if TYPE_CHECKING:
    from harness.model.export import ExportedModel

FAULT_ENV = "HARNESS_FAULT"
ALLOC_ENV = "HARNESS_FAULT_ALLOC_MB"
KINDS = ("segv", "abort")
PHASES = ("load", "run")


def crash_now(kind: str) -> None:
    """Die the way a native engine does: SIGSEGV (invalid memory access) or abort()."""
    if kind == "abort":
        os.abort()
    if kind == "segv":
        import ctypes

        ctypes.string_at(0)  # a real invalid read: the kernel sends SIGSEGV
        os.kill(os.getpid(), signal.SIGSEGV)  # in case the platform maps page 0
    raise ValueError(f"{FAULT_ENV}: unknown fault kind {kind!r}; known: {', '.join(KINDS)}")


def _fault_plan(default: str) -> tuple[str, str]:
    text = os.environ.get(FAULT_ENV, default)
    kind, _, phase = text.partition("@")
    if kind not in KINDS or phase not in PHASES:
        raise ValueError(f"{FAULT_ENV}={text!r}: expected <kind>@<phase> with kind in {KINDS} and phase in {PHASES}")
    return kind, phase


class _TorchSession(Session):
    """Runs the module in PyTorch, then ``after_run`` decides what to return."""

    def __init__(self, model: ExportedModel, backend: str, settings: dict[str, Any] | None = None) -> None:
        self.module = model.module()
        self.model = model
        self.executed_precision = "fp32"
        self.settings = {"fault_backend": backend, **(settings or {})}

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        return self.after_run(run_torch(self.module, feeds, self.model.input_names, self.model.output_names))

    def after_run(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return outputs

    def bind(self, feeds: Feeds) -> BoundCall:
        """``HARNESS_FAULT=raise@bind``: the timed call cannot be bound after a passing verdict (the record
        must keep its verdict and say why it has no latency); otherwise ``run(feeds)``."""
        if os.environ.get(FAULT_ENV) == "raise@bind":
            raise RuntimeError(f"{FAULT_ENV}=raise@bind: injected failure binding the timed call")
        return BoundCall(lambda: self.run(feeds))


class _FaultBackend(Backend):
    hidden: ClassVar[bool] = True
    needs_onnx: ClassVar[bool] = False
    precisions: ClassVar[frozenset[Precision]] = frozenset({Precision.FP32})

    def unavailable_reason(self) -> str | None:
        return None

    def version(self) -> str:
        return "test-only"


class CrashSession(_TorchSession):
    def __init__(self, model: ExportedModel, kind: str) -> None:
        super().__init__(model, "_fault_crash", {"fault": f"{kind}@run"})
        self.kind = kind

    def after_run(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        crash_now(self.kind)
        return outputs


class FaultCrashBackend(_FaultBackend):
    """Segfaults or aborts at load or at the first run (``HARNESS_FAULT``, default ``segv@run``)."""

    name: ClassVar[str] = "_fault_crash"

    def load(self, model: ExportedModel, precision: Precision, workdir: Path,
             calibration: Sequence[Feeds] | None = None) -> Session:
        kind, phase = _fault_plan("segv@run")
        if phase == "load":
            crash_now(kind)
        return CrashSession(model, kind)


class HangSession(_TorchSession):
    def after_run(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        while True:  # an engine deadlock: never returns
            time.sleep(3600)


class FaultHangBackend(_FaultBackend):
    """Never returns from ``run``."""

    name: ClassVar[str] = "_fault_hang"

    def load(self, model: ExportedModel, precision: Precision, workdir: Path,
             calibration: Sequence[Feeds] | None = None) -> Session:
        return HangSession(model, self.name)


class NanSession(_TorchSession):
    def after_run(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for k, v in outputs.items():
            v = np.array(v, dtype=np.float32, copy=True)
            v.flat[:: max(v.size // 4, 1)] = np.nan  # a few NaN among plausible values
            out[k] = v
        return out


class FaultNanBackend(_FaultBackend):
    """Returns the right outputs with some elements replaced by NaN."""

    name: ClassVar[str] = "_fault_nan"

    def load(self, model: ExportedModel, precision: Precision, workdir: Path,
             calibration: Sequence[Feeds] | None = None) -> Session:
        return NanSession(model, self.name)


class FaultAllocBackend(_FaultBackend):
    """Correct outputs, but load allocates and touches ``HARNESS_FAULT_ALLOC_MB`` MB held by the session."""

    name: ClassVar[str] = "_fault_alloc"

    def load(self, model: ExportedModel, precision: Precision, workdir: Path,
             calibration: Sequence[Feeds] | None = None) -> Session:
        mb = float(os.environ.get(ALLOC_ENV, "200"))
        session = _TorchSession(model, self.name, {"alloc_mb": mb})
        session.ballast = np.ones(int(mb * 2**20) // 8, dtype=np.float64)  # ones: every page really touched
        return session
