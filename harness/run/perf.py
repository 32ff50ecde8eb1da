"""Performance of a built session: latency in interleaved trials, a throughput sweep over batch sizes, roofline.

``measure_case`` is what ``harness.run.case`` calls once a case has passed its
comparison (every conformance case gets the quick options, the perf suite and
``--bench`` the isolated ones). The inputs are bound once per trial through
``Session.bind`` and the engine's native call is timed; trials alternate with
the batch sizes of the sweep (trial 1 of every size, then trial 2, ...), so the
drift of a shared machine is spread over all of them, and each trial's median
is kept (``latency['trials_p50_ms']``) for regression statistics. The session's
optional ``throughput(feeds, seconds) -> dict`` (an engine's own multi-stream
mode) is called after the trials. FLOPs and peaks: ``harness.run.roofline``.

What is inside the timed region, per engine (everything else is done once, at bind):

* ORT: ``InferenceSession.run_with_iobinding(binding)``; inputs bound once as CPU
  arrays (copied once to the device for the CUDA/TensorRT EPs), outputs written into
  OrtValues allocated once; no feed dict, no output list, no allocation.
* OpenVINO: the binding's synchronous ``InferRequest.infer`` with input tensors set once
  on the request and outputs left in it (``benchmark_app``'s call without the Python
  wrapper's output copies); the runtime's own ``request.latency`` is kept as
  ``engine_p50_ms``.
* ncnn: as ``benchncnn``: per call and batch item, ``create_extractor`` + ``input`` of
  Mats made once + ``extract`` of every output, light mode, pooled allocators,
  OpenMP dynamic teams off.
* TensorRT: ``execute_async_v3`` on the session's stream between two CUDA events, then
  the end event's synchronize; inputs copied to device buffers once; the events' time
  is ``engine_p50_ms``.
* PyTorch: ``module(*tensors)`` under ``inference_mode`` on tensors made once.
* Others: ``Session.run(feeds)`` (host arrays in and out).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.core.options import MeasureOptions
from harness.run import timing
from harness.run.roofline import roofline

if TYPE_CHECKING:
    from harness.backends.base import Session
    from harness.core.options import CaseRequest
    from harness.core.record import Record
    from harness.core.spec import ModelSpec

__all__ = ["batch_size", "batches_to_sweep", "has_batch_axis", "measure_case", "timed_path", "trials"]

BATCH_AXIS = "batch"
FEEDS_SEED = 7


def measure_case(req: CaseRequest, spec: ModelSpec, session: Session, record: Record) -> Record:
    """The record with ``latency``, ``throughput`` and ``extra['roofline']`` filled in."""
    from harness.model.inputs import make_feeds

    measure = req.measure or MeasureOptions()
    feeds = make_feeds(spec, np.random.default_rng(FEEDS_SEED))
    batch = batch_size(spec, feeds)
    sweep = batches_to_sweep(spec, measure.batches)
    plan, skipped = _plan(spec, session, feeds, batch, sweep)
    latencies = trials(session, plan, measure)
    latency = latencies[batch]
    threads = session.settings.get("threads", req.threads)
    load, cpus = _load_1m(), _usable_cpus()
    lat = {**latency.as_dict(), "threads": threads, "batch": batch, "load_1m": load, "cpus": cpus,
           "busy": load is not None and load > cpus, "trials": measure.trials, "timed": timed_path(session),
           "isolated": measure.isolated}
    throughput = [{"batch": b, "items_per_s": round(b * 1000.0 / lat_b.mean_ms, 3), "p50_ms": lat_b.p50_ms,
                   "mode": "sync", "unstable": lat_b.unstable, "trials_p50_ms": list(lat_b.trials_p50_ms)}
                  for b, lat_b in latencies.items() if b in sweep]
    throughput += _engine_modes(session, [(b, f) for b, f in plan if b in sweep], measure, skipped)
    extra = dict(record.extra)
    if skipped:
        extra["throughput_skipped"] = skipped
    roof = roofline(req, spec, latency.p50_ms, threads, record.executed_precision or "fp32",
                    build=measure.isolated or _reads_onnx(req))
    if roof:
        extra["roofline"] = roof
        for entry in throughput:
            if entry.get("p50_ms") and roof.get("gflops"):
                entry["gflop_s"] = round(roof["gflops"] * entry["batch"] / batch / (entry["p50_ms"] / 1e3), 3)
    return dataclasses.replace(record, latency=lat, throughput=throughput, extra=extra)


def trials(session: Session, plan: Sequence[tuple[int, Mapping[str, np.ndarray]]],
           measure: MeasureOptions) -> dict[int, timing.Latency]:
    """Time each ``(batch, feeds)`` of ``plan`` in ``measure.trials`` interleaved trials; combined per batch.

    Each trial binds its feeds anew (an engine has one request/context per session, so another batch's
    binding replaces it) and warms up: the full ``warmup`` the first time, one call afterwards.
    """
    opts = measure.timing_kwargs()
    sync = getattr(session, "sync", None)
    runs: dict[int, list[timing.Latency]] = {b: [] for b, _ in plan}
    # a quick (shared-child) measurement is bounded: a call slower than a trial's whole time budget is timed
    # once per trial, after one warm-up call in the first trial only (torch fp16 on CPU: seconds per call)
    slow_call_s = None if measure.isolated else opts["min_time_s"]
    for trial in range(measure.trials):
        for b, feeds in plan:
            bound = session.bind(feeds)
            call: Callable[[], object] = getattr(bound, "call", bound)
            engine_ms = getattr(bound, "engine_ms", None)
            slow = slow_call_s is not None and bool(runs[b]) and runs[b][-1].p50_ms / 1e3 > slow_call_s
            warmup = opts["warmup"] if trial == 0 else 0 if slow else min(opts["warmup"], 1)
            runs[b].append(timing.measure(call, sync=sync, engine_ms=engine_ms, slow_call_s=slow_call_s,
                                          **{**opts, "warmup": warmup, **({"min_iterations": 1} if slow else {})}))
            del bound, call  # the binding's buffers go before the next one is made
    return {b: timing.combine(lats, cv_threshold=measure.cv_threshold) for b, lats in runs.items()}


def timed_path(session: Session) -> str:
    """What the timed call is: the session's own ``bind`` (native call) or the default ``run(feeds)``."""
    from harness.backends.base import Session as Base

    if type(session).bind is Base.bind:
        return "run(feeds): host arrays in and out (no native binding)"
    return f"{type(session).__name__}.bind: native call, inputs bound once (see harness.run.perf)"


def _reads_onnx(req: CaseRequest) -> bool:
    """Whether the case's backend built from the ONNX export (then counting FLOPs costs no export)."""
    from harness import backends

    try:
        return bool(backends.get(req.backend).needs_onnx)
    except Exception:  # an unknown backend name: do not export for it
        return False


def _plan(spec: ModelSpec, session: Session, feeds: Mapping[str, np.ndarray], batch: int, wanted: Sequence[int],
          ) -> tuple[list[tuple[int, Mapping[str, np.ndarray]]], list[dict[str, Any]]]:
    """The default feeds first, then every other batch size the session can run: ``(plan, skipped)``."""
    from harness.model.inputs import make_feeds

    plan: list[tuple[int, Mapping[str, np.ndarray]]] = [(batch, feeds)]
    skipped: list[dict[str, Any]] = []
    for b in wanted:
        if b == batch:
            continue
        if not has_batch_axis(spec):
            skipped.append({"batch": b, "reason": f"model {spec.name!r} has no symbolic '{BATCH_AXIS}' axis "
                                                  f"on every input; it runs at batch {batch} only"})
            continue
        other = make_feeds(spec, np.random.default_rng(FEEDS_SEED), sizes={BATCH_AXIS: b})
        try:
            problem = _batch_problem(session.run(other), b)
        except Exception as exc:  # an engine built for one batch size: note it and go on
            problem = f"{type(exc).__name__}: {str(exc)[:300]}"
        if problem is not None:
            skipped.append({"batch": b, "reason": f"session cannot run batch {b}: {problem}"})
            continue
        plan.append((b, other))
    return plan, skipped


def _engine_modes(session: Session, plan: Sequence[tuple[int, Mapping[str, np.ndarray]]], measure: MeasureOptions,
                  skipped: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The session's own throughput mode (e.g. multi-stream) at each swept batch size, where it has one."""
    engine_mode = getattr(session, "throughput", None)
    if engine_mode is None:
        return []
    out = []
    for b, feeds in plan:
        try:
            out.append({"batch": b, "p50_ms": None, **dict(engine_mode(feeds, float(measure.min_time_s)))})
        except Exception as exc:  # an optional engine mode failing must not lose the sync data
            skipped.append({"batch": b, "reason": f"engine throughput mode failed: {type(exc).__name__}: {exc}"})
    return out


def _load_1m() -> float | None:
    """The system's 1-minute load average: other work on the machine, recorded beside every latency."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _usable_cpus() -> int:
    """CPUs this process may run on: a 1-minute load above it means the cores were shared while timing."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def batch_size(spec: ModelSpec, feeds: Mapping[str, np.ndarray]) -> int:
    """Items per call: the size of the ``batch`` axis, else the leading dimension of the first input."""
    for t in spec.inputs:
        if t.shape and t.shape[0] == BATCH_AXIS:
            return int(feeds[t.name].shape[0])
    first = feeds[spec.inputs[0].name]
    return int(first.shape[0]) if first.ndim else 1


def has_batch_axis(spec: ModelSpec) -> bool:
    """True when the first dimension of every input is the symbolic ``batch`` axis."""
    return all(t.shape and t.shape[0] == BATCH_AXIS for t in spec.inputs)


def batches_to_sweep(spec: ModelSpec, requested: Sequence[int] | None) -> list[int]:
    """``requested`` (``--batch``; ``()`` = no sweep), else 1 plus the model's declared batch sizes."""
    if requested is not None:
        return sorted({int(b) for b in requested})
    return sorted({1, *spec.dynamic_sizes.get(BATCH_AXIS, ())})


def _batch_problem(outputs: Mapping[str, np.ndarray], batch: int) -> str | None:
    for name, out in outputs.items():
        if np.ndim(out) == 0 or out.shape[0] != batch:
            return f"output {name!r} has shape {np.shape(out)}, expected leading dimension {batch}"
    return None
