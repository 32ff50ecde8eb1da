"""Peak memory of a case, measured by the kernel from outside the engine.

Linux keeps a per-process resident-set high-water mark (``VmHWM`` in
``/proc/self/status``); writing ``5`` to ``/proc/self/clear_refs`` resets it to
the current RSS. A case child resets it once its imports are done, so the peak
it reads at the end is the case's own (engine load/compile + inference) above
the idle child's baseline. The parent cross-checks with the child's
``ru_maxrss`` from ``os.wait4`` (the same kernel counter, read after exit):
both include native allocations, which ``tracemalloc`` never sees. GPU memory
comes from NVML when ``pynvml`` is importable, else it is not reported.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_mb(key: str) -> float | None:
    with contextlib.suppress(OSError):
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return None


TRIM_SLACK_MB = 8.0
"""Freed heap a reused child may keep between cases: the most by which a case's peak can read low."""
_trimmed_rss_mb = [0.0]


def release_freed_memory() -> None:
    """Hand memory that earlier work freed back to the kernel before a new baseline: Python's young cycles
    (``gc.collect(1)``, 0.1 ms; a full collection costs 80 ms with torch loaded), then glibc's
    ``malloc_trim(0)`` once RSS is more than ``TRIM_SLACK_MB`` above where the last trim left
    it. Without it a reused child's heap keeps an earlier case's high-water mark and the next case's peak
    counts only its growth beyond it: the same ORT resnet18 case measured 272, 166 and 175 MB in one child;
    with it 272, 271 and 271 MB. (Trimming before every case cost the 2,033 ONNX operator cases 0.3 s of
    page faults.)"""
    import gc

    gc.collect(1)
    if current_rss_mb() - _trimmed_rss_mb[0] <= TRIM_SLACK_MB:
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL(None).malloc_trim(0)
    _trimmed_rss_mb[0] = current_rss_mb()


def current_rss_mb() -> float:
    """Resident set size of this process now, in MiB."""
    rss = _status_mb("VmRSS")
    if rss is not None:
        return rss
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """High-water mark of this process's RSS (since start or the last ``reset_peak``), in MiB."""
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    return maxrss_to_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS; False where unsupported."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def maxrss_to_mb(ru_maxrss: int) -> float:
    """``ru_maxrss`` in MiB (kilobytes on Linux, bytes on macOS)."""
    return ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


@dataclass(frozen=True)
class MemoryUsage:
    """Peak RSS above a baseline, and how it was measured."""

    baseline_mb: float
    peak_mb: float
    method: str
    gpu_peak_mb: float | None = None

    @property
    def delta_mb(self) -> float:
        """Peak above the baseline (the case's own memory)."""
        return round(max(self.peak_mb - self.baseline_mb, 0.0), 1)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary for ``Record.extra['memory']``."""
        out = {"baseline_mb": round(self.baseline_mb, 1), "peak_mb": round(self.peak_mb, 1),
               "delta_mb": self.delta_mb, "method": self.method}
        if self.gpu_peak_mb is not None:
            out["gpu_peak_mb"] = round(self.gpu_peak_mb, 1)
        return out


class PeakRss:
    """Track this process's peak RSS (and GPU memory when NVML is present) from now on.

    ``start()`` takes the current RSS as the baseline and resets the kernel's
    high-water mark; ``stop()`` reads it. Where the reset is unsupported (not
    Linux, no /proc) the peak is the process's lifetime peak and ``method`` says so.
    """

    def __init__(self) -> None:
        self.baseline_mb = 0.0
        self.method = ""
        self._gpu: _GpuSampler | None = None

    def start(self) -> PeakRss:
        """Set the baseline and reset the high-water mark; returns self."""
        self.method = "VmHWM after clear_refs" if reset_peak() else "lifetime ru_maxrss (no clear_refs)"
        self.baseline_mb = current_rss_mb()
        self._gpu = _GpuSampler.start_if_present()
        return self

    def stop(self) -> MemoryUsage:
        """Peak since ``start()``."""
        gpu = self._gpu.stop() if self._gpu is not None else None
        return MemoryUsage(self.baseline_mb, peak_rss_mb(), self.method, gpu)

    def __enter__(self) -> PeakRss:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._gpu is not None:
            self._gpu.stop()


class _GpuSampler:
    """Polls NVML's device memory in a thread (NVML keeps no per-process high-water mark).

    NVML reports device-wide usage, so the figure is the case's own only when it
    runs alone on the device; the value is the peak above the usage at start.
    """

    def __init__(self, pynvml: Any, handle: Any, interval_s: float) -> None:
        import threading

        self._nvml, self._handle, self._interval_s = pynvml, handle, interval_s
        self._start_mb = self._used_mb()
        self._peak_mb = self._start_mb
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="nvml-sampler", daemon=True)
        self._thread.start()

    absent = False
    """Set once NVML is known to be missing here: a failed import is looked for again on every call (0.2 ms)."""

    @classmethod
    def start_if_present(cls, device: int = 0, interval_s: float = 0.01) -> _GpuSampler | None:
        if cls.absent:
            return None
        try:
            import pynvml

            pynvml.nvmlInit()
            return cls(pynvml, pynvml.nvmlDeviceGetHandleByIndex(device), interval_s)
        except Exception:  # no pynvml, no driver or no GPU: nothing to report
            cls.absent = True
            return None

    def _used_mb(self) -> float:
        return self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20

    def _poll(self) -> None:
        while not self._done.wait(self._interval_s):
            self._peak_mb = max(self._peak_mb, self._used_mb())

    def stop(self) -> float:
        if not self._done.is_set():
            self._done.set()
            self._thread.join()
            self._peak_mb = max(self._peak_mb, self._used_mb())
            self._nvml.nvmlShutdown()
        return self._peak_mb - self._start_mb


def child_peak_mb(rusage: Any) -> float:
    """A reaped child's peak RSS from the ``os.wait4`` rusage, in MiB."""
    return maxrss_to_mb(rusage.ru_maxrss)


def idle_child_baseline_mb(imports: tuple[str, ...] = ("harness.run.case", "numpy", "torch")) -> float:
    """Peak RSS of a child that only imports ``imports`` and exits (the wait4 method's baseline)."""
    import subprocess

    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)"
    proc = subprocess.Popen([sys.executable, "-c", code, *imports], env={**os.environ, "PYTHONWARNINGS": "ignore"})
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"idle child importing {imports} exited with {proc.returncode}")
    return child_peak_mb(rusage)
