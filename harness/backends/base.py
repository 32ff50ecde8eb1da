"""The Backend and Session interfaces every engine implements.

A backend file defines one ``Backend`` subclass with a ``name``; defining it
registers it (``__init_subclass__``), so adding an engine is adding one file.
Vendor SDKs are imported inside methods, never at module import time.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from harness.core.types import Feeds, Precision

if TYPE_CHECKING:
    from harness.model.export import ExportedModel


@dataclass(frozen=True)
class BoundCall:
    """What ``Session.bind`` returns: the native call, and the engine's own time of its last run where known.

    ``keep`` holds what the call borrows (input buffers, output tensors, allocators) for as long as the
    call lives. Callers time ``call`` directly (one Python frame less than calling the object).
    """

    call: Callable[[], object]
    engine_ms: Callable[[], float] | None = None
    """The engine's own measurement of the last ``call`` in milliseconds (read outside the timed region)."""
    keep: tuple[Any, ...] = ()

    def __call__(self) -> object:
        return self.call()


class Session(ABC):
    """A model built for one engine at one precision, ready to run.

    Attributes:
        executed_precision: what the engine really computes with, read back from
            the engine (``fp32``, ``fp16``, ``int8`` or ``mixed(...)``).
        settings: the engine settings this session runs with (threads, providers,
            quantization recipe, conversion path), recorded verbatim.
        artifact: the file the engine runs (for sizes and the record).
    """

    executed_precision: str = "unknown"
    settings: dict[str, Any]
    artifact: Path | None = None

    @abstractmethod
    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        """Run synchronously on host arrays; return host arrays by output name."""

    def bind(self, feeds: Feeds) -> Callable[[], object]:
        """The engine's native call with ``feeds`` bound once: what latency measurements time.

        Engines override it to move everything that is not inference out of the timed call
        (input conversion and copies, output dicts), the way their own benchmark tools do, and
        may return a ``BoundCall`` carrying the engine's own per-call time; what stays inside
        the timed region per engine is listed in ``harness.run.perf``. A later ``bind`` may
        replace an earlier one's bindings (one infer request / execution context per session):
        bind again before timing a different set of feeds. The return value is ignored.
        Default: ``run(feeds)`` (host arrays in, host arrays out).
        """
        return lambda: self.run(feeds)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release engine resources."""

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Backend(ABC):
    """An inference engine. Subclasses set the class variables and are auto-registered."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    precisions: ClassVar[frozenset[Precision]] = frozenset(Precision)
    hidden: ClassVar[bool] = False
    """Hidden backends (test-only fault injectors) never join an automatic sweep."""
    needs_onnx: ClassVar[bool] = True
    """Whether ``load`` reads ``model.onnx_path`` (False: it builds from the torch module)."""
    reads_onnx_files: ClassVar[bool] = True
    """Can build an ONNX-native model (one that exists only as an ONNX file): ncnn through pnnx's ONNX import."""
    sdk_modules: ClassVar[tuple[str, ...]] = ()
    """The vendor modules ``load`` imports: a case child imports them before it sets the case's memory
    baseline, so a case's peak memory is its own whether or not an earlier case in the child loaded them."""
    slow_precisions: ClassVar[frozenset[Precision]] = frozenset()
    """Precisions that run through a reference (non-deployment) path; perf suites skip them."""

    def __init__(self, threads: int | None = None, device: str = "cpu") -> None:
        self.threads = threads or default_threads()
        self.device = device

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            from harness.backends import register

            register(cls)

    @abstractmethod
    def unavailable_reason(self) -> str | None:
        """None when the engine can run here; else why not (used as the skip reason)."""

    @abstractmethod
    def version(self) -> str:
        """The engine's version string."""

    def warm_up(self) -> None:  # noqa: B027 - optional hook
        """Pay the engine's one-time start-up (plugin loading, thread pools, first compile) on a trivial
        graph. A case child calls it once per engine before the first case's memory baseline, so that case's
        peak is its own, like every later one's. Default: nothing to pay."""

    @abstractmethod
    def load(
        self,
        model: ExportedModel,
        precision: Precision,
        workdir: Path,
        calibration: Sequence[Feeds] | None = None,
    ) -> Session:
        """Convert/compile ``model`` at ``precision`` and return a ready session.

        Raises ConversionError when the engine rejects the model and
        UnsupportedPrecision when it cannot build it at ``precision``.
        """

    def precision_support(self) -> dict[Precision, str | None]:
        """Every precision -> None when it can run on this machine (perhaps as a fallback), else why not."""
        reason = self.unavailable_reason()
        return {p: reason if reason is not None else None if p in self.precisions
                else f"{self.name} does not support {p.value}" for p in Precision}

    def unsupported_reason(self, model: ExportedModel, precision: Precision) -> str | None:
        """Why this backend cannot run ``model`` at ``precision`` at all, known before building."""
        if precision not in self.precisions:
            have = ", ".join(sorted(p.value for p in self.precisions))
            return f"{self.name} does not support {precision.value} (supports {have})"
        return None


def default_threads() -> int:
    """Threads per engine: ``HARNESS_THREADS`` or the CPUs this process may use."""
    env = os.environ.get("HARNESS_THREADS")
    if env:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def missing_package_reason(backend: str, *modules: str) -> str | None:
    """'<backend>: Python package X not installed (pip install ...)' for the first missing module."""
    import importlib.util

    for mod in modules:
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):  # a broken or blocked package counts as absent
            found = False
        if not found:
            return f"{backend}: Python package {mod!r} not installed (pip install -e '.[{backend}]')"
    return None
