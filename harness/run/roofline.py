"""FLOPs of a model and the CPU's peak per precision: where a measured latency sits under the roof.

FLOPs come from the model's ONNX graph (2 x multiply-accumulates of Conv,
ConvTranspose, Gemm, MatMul and the recurrent ops LSTM/GRU/RNN), cached beside
the export. The peak is derived from the CPU's instruction sets for the type the
engine really computed in (``executed_precision``): per core and cycle,

* fp32: FMA datapath bits / 32 lanes x 2 (multiply + add);
* int8: with VNNI (``vpdpbusd``: 4 MACs per 32-bit lane) 4x the fp32 rate; without it
  (AVX2 ``vpmaddubsw`` + ``vpmaddwd`` + ``vpaddd``: three instructions for 4 MACs per
  lane) 4/3x; AMX-INT8 tiles 2048 ops;
* fp16: with AVX512-FP16 2x fp32, AMX-FP16 2048/2 ops; without fp16 arithmetic the
  kernels convert to fp32 and the fp32 peak is the ceiling;
* bf16: AVX512-BF16 (``vdpbf16ps``) 2x fp32, AMX-BF16 1024 ops.

The FMA datapath is two units of the widest vector width, except AMD family 25
(Zen 4), which runs 512-bit instructions on 256-bit units (512 bits per cycle in
all). Times the cores used and the maximum clock.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from harness.core.options import CaseRequest
    from harness.core.spec import ModelSpec

FLOPS_VERSION = 2
"""Part of the cached count's file name: bump when the counting changes (2: partial shapes, recurrent fallbacks)."""


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
    shapes: dict[str, tuple[int | None, ...]] = {t.name: tuple(t.dims) for t in g.initializer}
    for vi in [*g.input, *g.value_info, *g.output]:
        if vi.type.tensor_type.HasField("shape"):  # partial shapes count too: an LSTM needs only seq and batch
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                    for d in vi.type.tensor_type.shape.dim)
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


def _shape(shapes: Mapping[str, tuple[int | None, ...] | None], name: str) -> tuple[int, ...]:
    s = shapes[name]
    if s is None or any(d is None for d in s):
        raise ValueError(name)
    return s  # type: ignore[return-value]


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


def _seq_batch(node: Any, shapes: Mapping[str, Any], layout: int) -> tuple[int, int]:
    """Sequence length and batch of a recurrent node: from X, else from its Y output (exporters often leave
    X's feature axis symbolic after a Reshape, while W already says the input size)."""
    x = shapes.get(node.input[0])
    if x is not None and len(x) == 3 and x[0] is not None and x[1] is not None:
        return (x[0], x[1]) if layout == 0 else (x[1], x[0])
    y = shapes.get(node.output[0]) if len(node.output) and node.output[0] else None
    if y is not None and len(y) == 4:  # layout 0: [seq, dirs, batch, hidden]; 1: [batch, seq, dirs, hidden]
        seq, batch = (y[0], y[2]) if layout == 0 else (y[1], y[0])
        if seq is not None and batch is not None:
            return seq, batch
    raise ValueError(node.input[0])


def _recurrent(gates: int) -> Any:
    def count(node: Any, shapes: Mapping[str, Any]) -> int:
        w, r = _shape(shapes, node.input[1]), _shape(shapes, node.input[2])
        layout = next((at.i for at in node.attribute if at.name == "layout"), 0)
        seq, batch = _seq_batch(node, shapes, layout)
        dirs, hidden = w[0], r[2]
        return 2 * seq * batch * dirs * gates * hidden * (w[2] + hidden)

    return count


_FLOP_OPS = {"Conv": _conv, "ConvTranspose": _conv_transpose, "MatMul": _matmul, "Gemm": _gemm,
             "LSTM": _recurrent(4), "GRU": _recurrent(3), "RNN": _recurrent(1)}


def model_flops(req: CaseRequest, spec: ModelSpec, *, build: bool = True) -> dict[str, Any]:
    """FLOPs of one inference at the default sizes, from the model's ONNX export (cached as JSON beside it).

    ``build=False`` reads only an existing count (LookupError when there is none): a quick measurement
    must not export the model for a backend that never needed the ONNX file.
    """
    from harness.core.cache import cached
    from harness.model.export import ExportedModel
    from harness.model.inputs import make_feeds

    model = ExportedModel(spec, exporter=req.export.exporter, opset=req.export.opset)
    shapes = {k: list(v.shape) for k, v in make_feeds(spec, np.random.default_rng(0)).items()}
    tag = "_".join("x".join(map(str, s)) for s in shapes.values())
    path = model.artifact(f"flops-v{FLOPS_VERSION}-{tag}.json")
    if not build and not path.exists():
        raise LookupError(f"no FLOPs count cached at {path} (counted when a case uses the model's ONNX export)")

    def count(tmp: Path) -> None:
        tmp.write_text(json.dumps(onnx_flops(model.onnx_path, shapes)))

    return json.loads(cached(path, count).read_text())


# ---------------------------------------------------------------- CPU peak per precision


def _cpu_identity() -> tuple[str, int | None]:
    """(vendor id, cpu family) from /proc/cpuinfo; ("", None) where unknown."""
    vendor, family = "", None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "vendor_id":
                vendor = value.strip()
            elif key.strip() == "cpu family":
                family = int(value)
            if vendor and family is not None:
                break
    return vendor, family


def _datapath_bits(flags: set[str]) -> tuple[int, str] | None:
    """FMA datapath bits per core and cycle, and how that was decided; None when not derivable."""
    vendor, family = _cpu_identity()
    if "avx512f" in flags:
        if vendor == "AuthenticAMD" and family == 25:
            return 512, "Zen 4: 512-bit instructions on two 256-bit FMA units"
        return 1024, "two 512-bit FMA units (AVX-512)"
    if "avx2" in flags or "avx" in flags:
        isa = "avx2" if "avx2" in flags else "avx"
        return 512, f"two 256-bit {'FMA' if 'fma' in flags else 'mul+add'} units ({isa})"
    return None


def peak_ops_per_cycle(flags: set[str], kind: str) -> tuple[float, str] | None:
    """Operations per core and cycle for ``kind`` (fp32, fp16, bf16, int8) and the rule used; None if unknown."""
    datapath = _datapath_bits(flags)
    if datapath is None:
        return None
    bits, unit = datapath
    fma = 2 if "fma" in flags or "avx512f" in flags else 1  # without FMA the two units are a mul and an add
    fp32 = bits / 32 * fma
    if kind == "int8":
        if "amx_int8" in flags:
            return 2048.0, "AMX-INT8 tiles: 1024 int8 MACs per cycle"
        if "avx512_vnni" in flags or "avx_vnni" in flags:
            return fp32 * 4, f"VNNI: 4 int8 MACs per 32-bit lane ({unit})"
        return fp32 * 4 / 3, f"no VNNI: u8s8 via vpmaddubsw+vpmaddwd+vpaddd, 4/3 of fp32 ({unit})"
    if kind == "fp16":
        if "amx_fp16" in flags:
            return 2048.0, "AMX-FP16 tiles"
        if "avx512_fp16" in flags:
            return fp32 * 2, f"AVX512-FP16: fp16 FMA lanes ({unit})"
        return fp32, f"no fp16 arithmetic: fp16 kernels compute in fp32 ({unit})"
    if kind == "bf16":
        if "amx_bf16" in flags:
            return 1024.0, "AMX-BF16 tiles"
        if "avx512_bf16" in flags:
            return fp32 * 2, f"AVX512-BF16 vdpbf16ps: 2 bf16 MACs per 32-bit lane ({unit})"
        return fp32, f"no bf16 arithmetic: bf16 kernels compute in fp32 ({unit})"
    return fp32, f"fp32 {'FMA' if fma == 2 else 'mul+add'}: {unit}"


def compute_kind(executed: str) -> str:
    """The type whose peak bounds a case: the fastest type that did arithmetic (int8 > fp16/bf16 > fp32)."""
    from harness.core.precision import compute_types

    types = compute_types(executed or "fp32")
    for kind in ("int8", "fp16", "bf16"):
        if kind in types:
            return kind
    return "fp32"


def cpu_peak_gflops(threads: int | None = None, precision: str = "fp32") -> dict[str, Any] | None:
    """Theoretical peak (GFLOP/s, or GOP/s for int8) of the cores used at ``precision``; None if unknown."""
    from harness.core.machine import cpu_flags

    flags = set(cpu_flags())
    rule = peak_ops_per_cycle(flags, precision)
    ghz = _clock_ghz()
    if rule is None or ghz is None:
        return None  # not x86 with AVX or no clock: no reliable rule here
    per_cycle, basis = rule
    cores = min(threads or os.cpu_count() or 1, os.cpu_count() or 1)
    peak = cores * per_cycle * ghz
    return {"peak_gflop_s": round(peak, 1), "peak_precision": precision,
            "peak_basis": f"{cores} cores x {per_cycle:g} {precision} ops/cycle ({basis}) x {ghz:.3f} GHz"}


def _clock_ghz() -> float | None:
    with contextlib.suppress(OSError, ValueError):
        khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text().strip()
        return int(khz) / 1e6
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1]) / 1e3
    return None


def roofline(req: CaseRequest, spec: ModelSpec, p50_ms: float, threads: int | None,
             executed: str = "fp32", *, build: bool = True) -> dict[str, Any]:
    """Achieved GFLOP/s at the median latency, and its fraction of the CPU's peak for the executed precision."""
    try:
        counted = model_flops(req, spec, build=build)
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
    kind = compute_kind(executed)
    peak = cpu_peak_gflops(threads, kind) if req.device == "cpu" else None
    if peak:
        out.update(peak)
    out = at_latency(out, p50_ms)
    if peak:
        if kind != "fp32" and "mixed" in (executed or ""):
            out["peak_note"] = f"mixed precision ({executed}): the {kind} peak is an upper bound"
    return out


def at_latency(roof: dict[str, Any], p50_ms: float) -> dict[str, Any]:
    """``roof`` with the achieved GFLOP/s (and its fraction of ``peak_gflop_s``, where known) at ``p50_ms``."""
    out = {**roof, "achieved_gflop_s": round(roof["gflops"] / (p50_ms / 1e3), 3)}
    if out.get("peak_gflop_s"):
        out["fraction_of_peak"] = round(out["achieved_gflop_s"] / out["peak_gflop_s"], 4)
    return out


def warm_flops_cache(req: CaseRequest) -> None:
    """Count the model's FLOPs before a measured case (cached on disk): it loads the whole ONNX graph, which
    must not count as the case's memory. Failures are left for the case itself to report."""
    if req.measure is not None and not req.measure.isolated:
        return  # a quick measurement in a shared child: counted (or not) inside the case
    with contextlib.suppress(Exception):
        from model_zoo import get_model, load_zoo_file

        for f in req.zoo_files:
            load_zoo_file(f)
        model_flops(req, get_model(req.model))
