"""Performance of a built session: latency, a throughput sweep over batch sizes, roofline.

``measure_case`` is what ``runner._measure`` calls once a case has passed its
comparison. Latency is measured at the model's default input sizes; the sweep
re-times the session at each batch size of a symbolic ``batch`` axis (reusing
the latency when the size is the default), and calls the session's optional
``throughput(feeds, seconds) -> dict`` (an engine's own multi-stream mode) when
it has one. FLOPs come from the model's ONNX graph (multiply-accumulates of
Conv, ConvTranspose, Gemm, MatMul and the recurrent ops, x2), cached beside it;
the CPU's peak is cores x SIMD lanes x 2 (FMA) x FMA units x clock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.core.options import MeasureOptions
from harness.run import timing

if TYPE_CHECKING:
    from harness.backends.base import Session
    from harness.core.options import CaseRequest
    from harness.core.record import Record
    from harness.core.spec import ModelSpec

BATCH_AXIS = "batch"
FEEDS_SEED = 7


def measure_case(req: CaseRequest, spec: ModelSpec, session: Session, record: Record) -> Record:
    """The record with ``latency``, ``throughput`` and ``extra['roofline']`` filled in."""
    from harness.model.inputs import make_feeds

    measure = req.measure or MeasureOptions()
    opts = measure.timing_kwargs()
    sync = getattr(session, "sync", None)
    feeds = make_feeds(spec, np.random.default_rng(FEEDS_SEED))
    batch = batch_size(spec, feeds)
    latency = timing.measure(lambda: session.run(feeds), sync=sync, **opts)
    threads = session.settings.get("threads", req.threads)
    lat = {**latency.as_dict(), "threads": threads, "batch": batch, "load_1m": _load_1m()}
    wanted = batches_to_sweep(spec, measure.batches)
    throughput, skipped = sweep(spec, session, wanted, opts, (batch, latency))
    extra = dict(record.extra)
    if skipped:
        extra["throughput_skipped"] = skipped
    roof = roofline(req, spec, latency.p50_ms, threads)
    if roof:
        extra["roofline"] = roof
        for entry in throughput:
            if entry.get("p50_ms") and roof.get("gflops"):
                entry["gflop_s"] = round(roof["gflops"] * entry["batch"] / batch / (entry["p50_ms"] / 1e3), 3)
    return dataclasses.replace(record, latency=lat, throughput=throughput, extra=extra)


def _load_1m() -> float | None:
    """The system's 1-minute load average: other work on the machine, recorded beside every latency."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


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
    """``requested`` (``--batch``), else 1 plus the model's declared batch sizes."""
    if requested:
        return sorted({int(b) for b in requested})
    return sorted({1, *spec.dynamic_sizes.get(BATCH_AXIS, ())})


def sweep(spec: ModelSpec, session: Session, batches: Sequence[int], opts: Mapping[str, Any],
          default: tuple[int, timing.Latency]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Throughput at each batch size: ``([{batch, items_per_s, p50_ms, mode, ...}], [skipped])``."""
    from harness.model.inputs import make_feeds

    default_batch, default_latency = default
    done: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    sync = getattr(session, "sync", None)
    engine_mode = getattr(session, "throughput", None)
    for b in batches:
        if b != default_batch and not has_batch_axis(spec):
            skipped.append({"batch": b, "reason": f"model {spec.name!r} has no symbolic '{BATCH_AXIS}' axis "
                                                  f"on every input; it runs at batch {default_batch} only"})
            continue
        feeds = make_feeds(spec, np.random.default_rng(FEEDS_SEED), sizes={BATCH_AXIS: b} if b != default_batch else {})
        if b == default_batch:
            lat = default_latency
        else:
            try:
                problem = _batch_problem(session.run(feeds), b)
                if problem is None:
                    lat = timing.measure(lambda f=feeds: session.run(f), sync=sync, **opts)
            except Exception as exc:  # an engine built for one batch size: note it and go on
                problem = f"{type(exc).__name__}: {str(exc)[:300]}"
            if problem is not None:
                skipped.append({"batch": b, "reason": f"session cannot run batch {b}: {problem}"})
                continue
        done.append({"batch": b, "items_per_s": round(b * 1000.0 / lat.mean_ms, 3), "p50_ms": lat.p50_ms,
                     "mode": "sync", "unstable": lat.unstable})
        if engine_mode is not None:
            try:
                entry = dict(engine_mode(feeds, float(opts.get("min_time_s", 1.0))))
                done.append({"batch": b, "p50_ms": None, **entry})
            except Exception as exc:  # an optional engine mode failing must not lose the sync data
                skipped.append({"batch": b, "reason": f"engine throughput mode failed: {type(exc).__name__}: {exc}"})
    return done, skipped


def _batch_problem(outputs: Mapping[str, np.ndarray], batch: int) -> str | None:
    for name, out in outputs.items():
        if np.ndim(out) == 0 or out.shape[0] != batch:
            return f"output {name!r} has shape {np.shape(out)}, expected leading dimension {batch}"
    return None


# ---------------------------------------------------------------- FLOPs


def onnx_flops(path: str | Path, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """Forward FLOPs (2 x multiply-accumulates) of the compute ops of an ONNX graph at concrete input shapes."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path), load_external_data=False)
    for inp in model.graph.input:
        if inp.name in input_shapes:
            dims = inp.type.tensor_type.shape.dim
            for d, size in zip(dims, input_shapes[inp.name], strict=True):
                d.ClearField("dim_param")
                d.dim_value = int(size)
    model = shape_inference.infer_shapes(model, data_prop=True)
    g = model.graph
    shapes: dict[str, tuple[int, ...] | None] = {t.name: tuple(t.dims) for t in g.initializer}
    for vi in [*g.input, *g.value_info, *g.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = tuple(d.dim_value for d in dims) if all(d.HasField("dim_value") for d in dims) else None
    total, by_op, unknown = 0, {}, []
    control_flow = sorted({n.op_type for n in g.node if n.op_type in ("Loop", "If", "Scan")})
    for node in g.node:
        if node.op_type not in _FLOP_OPS:
            continue
        try:
            flops = _FLOP_OPS[node.op_type](node, shapes)
        except (KeyError, TypeError, IndexError, ValueError):
            flops = None
        if flops is None:
            unknown.append(node.name or node.op_type)
            continue
        total += flops
        by_op[node.op_type] = by_op.get(node.op_type, 0) + flops
    return {"flops": int(total), "by_op": by_op, "uncounted_nodes": unknown, "control_flow": control_flow}


def _shape(shapes: Mapping[str, tuple[int, ...] | None], name: str) -> tuple[int, ...]:
    s = shapes[name]
    if s is None:
        raise ValueError(name)
    return s


def _conv(node: Any, shapes: Mapping[str, Any]) -> int:
    w, y = _shape(shapes, node.input[1]), _shape(shapes, node.output[0])
    return 2 * math.prod(y) * math.prod(w[1:])


def _conv_transpose(node: Any, shapes: Mapping[str, Any]) -> int:
    w, x = _shape(shapes, node.input[1]), _shape(shapes, node.input[0])
    return 2 * math.prod(x) * math.prod(w[1:])


def _matmul(node: Any, shapes: Mapping[str, Any]) -> int:
    a, y = _shape(shapes, node.input[0]), _shape(shapes, node.output[0])
    return 2 * math.prod(y) * a[-1]


def _gemm(node: Any, shapes: Mapping[str, Any]) -> int:
    a, y = _shape(shapes, node.input[0]), _shape(shapes, node.output[0])
    trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
    return 2 * math.prod(y) * (a[0] if trans_a else a[-1])


def _recurrent(gates: int) -> Any:
    def count(node: Any, shapes: Mapping[str, Any]) -> int:
        x, w, r = (_shape(shapes, n) for n in node.input[:3])
        layout = next((at.i for at in node.attribute if at.name == "layout"), 0)
        seq, batch = (x[0], x[1]) if layout == 0 else (x[1], x[0])
        dirs, hidden = w[0], r[2]
        return 2 * seq * batch * dirs * gates * hidden * (w[2] + hidden)

    return count


_FLOP_OPS = {"Conv": _conv, "ConvTranspose": _conv_transpose, "MatMul": _matmul, "Gemm": _gemm,
             "LSTM": _recurrent(4), "GRU": _recurrent(3), "RNN": _recurrent(1)}


def model_flops(req: CaseRequest, spec: ModelSpec) -> dict[str, Any]:
    """FLOPs of one inference at the default sizes, from the model's ONNX export (cached as JSON beside it)."""
    from harness.core.cache import cached
    from harness.model.export import ExportedModel
    from harness.model.inputs import make_feeds

    model = ExportedModel(spec, exporter=req.export.exporter, opset=req.export.opset)
    shapes = {k: list(v.shape) for k, v in make_feeds(spec, np.random.default_rng(0)).items()}
    tag = "_".join("x".join(map(str, s)) for s in shapes.values())
    path = model.artifact(f"flops-v1-{tag}.json")  # v1: bump when the counting changes

    def build(tmp: Path) -> None:
        tmp.write_text(json.dumps(onnx_flops(model.onnx_path, shapes)))

    return json.loads(cached(path, build).read_text())


# ---------------------------------------------------------------- CPU peak and roofline


def cpu_peak_gflops(threads: int | None = None) -> dict[str, Any] | None:
    """Theoretical fp32 peak of the cores used: cores x lanes x 2 (FMA) x FMA units x clock; None if unknown."""
    from harness.core.machine import cpu_flags

    flags = set(cpu_flags())
    if "avx512f" in flags:
        lanes, isa = 16, "avx512"
    elif "avx2" in flags or "avx" in flags:
        lanes, isa = 8, "avx2" if "avx2" in flags else "avx"
    else:
        return None  # not x86 with AVX: no reliable rule here
    fma = "fma" in flags
    units = 2  # two 256/512-bit FMA (or mul+add) pipes: Zen 2+, Haswell+, most AVX-512 server parts
    ghz = _clock_ghz()
    if ghz is None:
        return None
    cores = min(threads or os.cpu_count() or 1, os.cpu_count() or 1)
    per_lane = 2 if fma else 1  # without FMA, the two pipes are a multiplier and an adder: 1 flop each
    peak = cores * lanes * per_lane * units * ghz
    return {"peak_gflop_s": round(peak, 1),
            "peak_basis": f"{cores} cores x {lanes} fp32 lanes ({isa}) x {per_lane} (FMA) x {units} FMA units "
                          f"x {ghz:.3f} GHz"}


def _clock_ghz() -> float | None:
    with contextlib.suppress(OSError, ValueError):
        khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text().strip()
        return int(khz) / 1e6
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1]) / 1e3
    return None


def roofline(req: CaseRequest, spec: ModelSpec, p50_ms: float, threads: int | None) -> dict[str, Any]:
    """Achieved GFLOP/s at the median latency, and its fraction of the CPU's fp32 peak where derivable."""
    try:
        counted = model_flops(req, spec)
    except Exception as exc:  # no ONNX export, no FLOPs: the rest of the record stands
        return {"error": f"FLOPs not counted: {type(exc).__name__}: {str(exc)[:200]}"}
    gflops = counted["flops"] / 1e9
    out: dict[str, Any] = {"flops": counted["flops"], "gflops": round(gflops, 9), "flops_by_op": counted["by_op"],
                           "uncounted_nodes": len(counted["uncounted_nodes"]),
                           "flops_source": "ONNX graph: 2 x MACs of Conv/ConvTranspose/Gemm/MatMul/LSTM/GRU/RNN"}
    incomplete = []
    if counted["uncounted_nodes"]:
        incomplete.append(f"{len(counted['uncounted_nodes'])} compute nodes without static shapes")
    if counted.get("control_flow"):
        incomplete.append(f"{', '.join(counted['control_flow'])} subgraphs not counted")
    if incomplete:
        out["incomplete"] = "; ".join(incomplete)
    if counted["flops"] == 0:
        out["error"] = "no FLOPs counted: " + (out.get("incomplete") or "the graph has no Conv/Gemm/MatMul/RNN op")
        return out
    out["achieved_gflop_s"] = round(gflops / (p50_ms / 1e3), 3)
    peak = cpu_peak_gflops(threads) if req.device == "cpu" else None
    if peak:
        out.update(peak)
        out["fraction_of_peak"] = round(out["achieved_gflop_s"] / peak["peak_gflop_s"], 4)
        if req.precision.value != "fp32":
            out["peak_note"] = "peak is the fp32 FMA peak; int8/fp16 kernels have other ceilings"
    return out


def warm_flops_cache(req: CaseRequest) -> None:
    """Count the model's FLOPs before a measured case (cached on disk): it loads the whole ONNX graph, which
    must not count as the case's memory. Failures are left for the case itself to report."""
    with contextlib.suppress(Exception):
        from model_zoo import get_model, load_zoo_file

        for f in req.zoo_files:
            load_zoo_file(f)
        model_flops(req, get_model(req.model))
