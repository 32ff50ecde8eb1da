"""Latency measurement: warm-up, then timed synchronous calls until a minimum time and count.

Every call is timed on its own with ``time.perf_counter_ns`` (tens of
nanoseconds of overhead, negligible against an inference call), so the
percentiles are of single calls, the way ``benchmark_app -api sync`` reports
them. A measurement whose coefficient of variation exceeds ``cv_threshold`` is
flagged ``unstable``: reported, never presented as a fact.

A case is timed in several independent trials (``combine``): the record keeps
each trial's median (``trials_p50_ms``, what regression statistics compare) and
the statistics of all samples together. Where the engine reports its own time
of a call (OpenVINO's ``request.latency``, CUDA events around TensorRT's
``execute_async_v3``), it is collected beside the wall-clock samples
(``engine_p50_ms``), outside the timed region.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

RECORD_SAMPLES = 200
"""At most this many per-call samples go into a record (evenly spaced, in call order)."""


@dataclass(frozen=True)
class Latency:
    """Statistics of one timed loop; times in milliseconds."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    stdev_ms: float
    cv: float
    min_ms: float
    n: int
    elapsed_s: float
    samples_ms: tuple[float, ...]
    unstable: bool
    trials_p50_ms: tuple[float, ...] = ()
    """Median of each independent trial (one entry when measured in one loop)."""
    engine_samples_ms: tuple[float, ...] = ()
    """The engine's own time of each timed call, where it reports one (same order as ``samples_ms``)."""

    @property
    def engine_p50_ms(self) -> float | None:
        """Median of the engine's own per-call times (None when the engine reports none)."""
        return round(float(np.median(self.engine_samples_ms)), 6) if self.engine_samples_ms else None

    @property
    def items_per_s(self) -> float:
        """Calls per second at the mean latency."""
        return 1000.0 / self.mean_ms if self.mean_ms > 0 else math.inf

    def as_dict(self) -> dict[str, Any]:
        """The record's ``latency`` dict (samples capped at RECORD_SAMPLES)."""
        out = {
            "p50_ms": self.p50_ms, "p90_ms": self.p90_ms, "p99_ms": self.p99_ms, "mean_ms": self.mean_ms,
            "stdev_ms": self.stdev_ms, "cv": self.cv, "min_ms": self.min_ms, "n": self.n,
            "elapsed_s": self.elapsed_s, "samples_ms": list(thin(self.samples_ms, RECORD_SAMPLES)),
            "unstable": self.unstable, "trials_p50_ms": list(self.trials_p50_ms or (self.p50_ms,)),
        }
        if self.engine_samples_ms:
            out["engine_p50_ms"] = self.engine_p50_ms
        return out


def thin(samples: tuple[float, ...] | list[float], count: int) -> tuple[float, ...]:
    """``count`` evenly spaced samples in call order (all of them when there are fewer)."""
    if len(samples) <= count:
        return tuple(samples)
    idx = np.linspace(0, len(samples) - 1, count).round().astype(int)
    return tuple(samples[i] for i in idx)


def summarize(samples_ns: list[int] | np.ndarray, *, elapsed_s: float = 0.0, cv_threshold: float = 0.1,
              engine_ms: list[float] | tuple[float, ...] = ()) -> Latency:
    """Latency statistics of per-call durations given in nanoseconds (``engine_ms``: the engine's own times)."""
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if ms.size == 0:
        raise ValueError("no samples to summarize: the timed loop ran zero calls")
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    mean = float(ms.mean())
    stdev = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
    cv = stdev / mean if mean > 0 else 0.0
    return Latency(
        p50_ms=round(p50, 6), p90_ms=round(p90, 6), p99_ms=round(p99, 6), mean_ms=round(mean, 6),
        stdev_ms=round(stdev, 6), cv=round(cv, 5), min_ms=round(float(ms.min()), 6), n=int(ms.size),
        elapsed_s=round(elapsed_s, 4), samples_ms=tuple(round(float(v), 6) for v in ms),
        unstable=bool(cv > cv_threshold), trials_p50_ms=(round(p50, 6),),
        engine_samples_ms=tuple(round(float(v), 6) for v in engine_ms),
    )


def combine(trials: list[Latency] | tuple[Latency, ...], *, cv_threshold: float = 0.1) -> Latency:
    """One Latency of several independent trials: statistics of all their samples, each trial's median kept.

    ``unstable`` when the trials' medians disagree by more than ``cv_threshold`` of their median (the
    p50 is then not reproducible: a drift or an episode of the machine that no single trial shows).
    The per-call CV of the samples is reported (``cv``) but does not decide it for several trials: rare
    interrupts of sub-millisecond calls inflate a CV without moving any trial's median. One trial alone
    has nothing to agree with, so its CV decides (``summarize``).
    """
    if not trials:
        raise ValueError("no trials to combine: measure at least one")
    samples_ns = [round(v * 1e6) for t in trials for v in t.samples_ms]
    engine = [v for t in trials for v in t.engine_samples_ms] if all(t.engine_samples_ms for t in trials) else []
    out = summarize(samples_ns, elapsed_s=sum(t.elapsed_s for t in trials), cv_threshold=cv_threshold,
                    engine_ms=engine)
    medians = tuple(t.p50_ms for t in trials)
    unstable = out.unstable if len(medians) < 2 else trials_disagree(medians, cv_threshold)
    return replace(out, trials_p50_ms=medians, unstable=unstable)


def trials_disagree(medians: tuple[float, ...] | list[float], threshold: float = 0.1) -> bool:
    """Whether trial medians spread (max - min) by more than ``threshold`` of their median: the rule that
    makes a measurement ``unstable`` (its p50 is not reproducible)."""
    return len(medians) > 1 and (max(medians) - min(medians)) / float(np.median(medians)) > threshold


def measure(
    fn: Callable[[], object],
    *,
    min_time_s: float = 1.0,
    min_iterations: int = 10,
    warmup: int = 3,
    max_samples: int = 1000,
    cv_threshold: float = 0.1,
    sync: Callable[[], object] | None = None,
    engine_ms: Callable[[], float] | None = None,
    slow_call_s: float | None = None,
) -> Latency:
    """Time ``fn`` synchronously, one sample per call.

    Args:
        fn: the call to time (e.g. ``lambda: session.run(feeds)`` on host arrays).
        min_time_s: keep calling until at least this much time was spent timing...
        min_iterations: ...and at least this many calls were timed.
        warmup: untimed calls first (allocation, JIT, cache warm-up).
        max_samples: stop once this many calls were timed even if ``min_time_s`` has not
            passed yet (very fast calls: enough samples for stable percentiles); never
            fewer than ``min_iterations``.
        cv_threshold: ``unstable`` is set when stdev/mean exceeds it.
        sync: called inside the timed region after ``fn`` (device backends: wait for the
            device so the sample covers the work, not only the launch).
        engine_ms: called after each timed call, outside the timed region: the engine's own
            time of that call in milliseconds (``BoundCall.engine_ms``).
        slow_call_s: a quick measurement's budget: when one warm-up call alone takes longer, the
            rest of the warm-up is skipped and a single call is timed (a reference path such as
            torch fp16 on a CPU takes seconds per call; its order of magnitude is what a quick
            look can tell).
    """
    if min_iterations < 1:
        raise ValueError(f"min_iterations must be >= 1, got {min_iterations}")
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        if slow_call_s is not None and time.perf_counter() - t0 > slow_call_s:
            min_iterations = 1
            break
    cap = max(max_samples, min_iterations)
    min_time_ns = int(min_time_s * 1e9)
    samples: list[int] = []
    engine: list[float] = []
    clock = time.perf_counter_ns
    start = clock()
    while True:
        t0 = clock()
        fn()
        if sync is not None:
            sync()
        t1 = clock()
        samples.append(t1 - t0)
        if engine_ms is not None:
            engine.append(float(engine_ms()))
        n = len(samples)
        if n >= min_iterations and (t1 - start >= min_time_ns or n >= cap):
            break
    return summarize(samples, elapsed_s=(clock() - start) / 1e9, cv_threshold=cv_threshold, engine_ms=engine)


def bare_loop_ms(fn: Callable[[], object], iterations: int, warmup: int = 3) -> float:
    """Mean milliseconds per call of a plain ``for`` loop with no per-call timing (overhead reference)."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter_ns()
    for _ in range(iterations):
        fn()
    return (time.perf_counter_ns() - start) / 1e6 / iterations
