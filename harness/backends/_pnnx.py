"""pnnx conversions for the ncnn backend: a torch module (TorchScript trace) or an ONNX file -> ncnn .param/.bin."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.model.export import ExportedModel

import importlib.util
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.errors import ConversionError, ExportError

PNNX_TIMEOUT_S = 1800


_PNNX_TYPES = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16", "uint8": "u8", "int8": "i8",
               "int16": "i16", "int32": "i32", "int64": "i64", "bool": "i8"}



def pnnx_exe() -> Path:
    spec = importlib.util.find_spec("pnnx")
    origin = Path(spec.origin) if spec is not None and spec.origin else Path("pnnx")
    return origin.parent / ("pnnx.exe" if sys.platform == "win32" else "pnnx")


def trace_inputs(model: ExportedModel) -> tuple[Any, ...]:
    """The export example with a batch of 1 (pnnx/ncnn treat axis 0 as the batch)."""
    import torch

    example = model.example_feeds()
    args = []
    for t in model.spec.inputs:
        arr = np.asarray(example[t.name])
        if arr.ndim and isinstance(t.shape[0], str):
            arr = arr[:1]
        args.append(torch.from_numpy(np.asarray(arr, order="C")))  # ascontiguousarray would make 0-d 1-d
    return tuple(args)


def _shape_arg(model: ExportedModel, args: Sequence[Any], sizes: dict[str, int]) -> str:
    parts = []
    for t, a in zip(model.spec.inputs, args, strict=True):
        dims = [1 if i == 0 and isinstance(d, str) else sizes[d] if isinstance(d, str) else d
                for i, d in enumerate(t.shape)]  # a symbolic axis 0 is the batch: pnnx/ncnn drop it
        parts.append("[" + ",".join(map(str, dims)) + "]" + _PNNX_TYPES.get(str(a.dtype).removeprefix("torch."), "f32"))
    return ",".join(parts)


def build_from_torch(model: ExportedModel, tmp: Path, fp16: bool) -> dict[str, Any]:
    """Trace ``model`` and convert it with pnnx into ``tmp`` (.param) and ``tmp.with_suffix('.bin')``."""
    import torch

    from harness.model.reference import mha_fastpath_disabled

    args = trace_inputs(model)
    folder, pt = tmp.parent, tmp.parent / "model.pt"
    start = time.perf_counter()
    try:  # the MHA fast path's aten::_transformer_encoder_layer_fwd breaks pnnx
        with torch.no_grad(), warnings.catch_warnings(), mha_fastpath_disabled():
            warnings.simplefilter("ignore")
            # the traceable module returns the flattened outputs (dicts, nested tuples, None dropped) in
            # model.output_names order: pnnx names them out0, out1, ... in that order
            torch.jit.trace(model.traceable(), args, check_trace=False).save(str(pt))
    except Exception as exc:
        raise ExportError(f"torch.jit.trace (for pnnx) failed: {type(exc).__name__}: {exc}") from exc
    trace_s = time.perf_counter() - start
    # the traced inputs' own shapes: pnnx checks inputshape= against what the trace saved
    shape1 = ",".join("[" + ",".join(map(str, a.shape)) + "]" + _PNNX_TYPES.get(str(a.dtype).removeprefix("torch."),
                                                                              "f32") for a in args)
    second = {k: v[1] if len(v) > 1 else v[0] for k, v in model.spec.dynamic_sizes.items()}
    shape2 = _shape_arg(model, args, second)
    log: dict[str, Any] = {"trace_seconds": round(trace_s, 3), "inputshape": shape1}
    if any(a.dim() == 0 for a in args):
        # pnnx parses "[]f32" as no shape at all ("input_shape expect 2 tensors but got 1"); without
        # inputshape= it reads every shape, 0-d included, from the traced inputs (static shapes)
        shape1 = shape2 = ""
        log["inputshape"] = "from the traced inputs (pnnx cannot parse a 0-d shape in inputshape=)"
    argv = [str(pnnx_exe()), pt.name, *([f"inputshape={shape1}"] if shape1 else []), f"fp16={int(fp16)}",
            f"ncnnparam={tmp.name}", f"ncnnbin={tmp.with_suffix('.bin').name}", "ncnnpy=model_ncnn.py",
            "pnnxparam=model.pnnx.param",
            "pnnxbin=model.pnnx.bin", "pnnxpy=model_pnnx.py", "pnnxonnx=model.pnnx.onnx"]
    start = time.perf_counter()
    proc = _run_pnnx(argv + ([f"inputshape2={shape2}"] if shape2 != shape1 else []), folder)
    if shape2 != shape1 and (proc.returncode != 0 or not tmp.is_file() or _leftovers(tmp)):
        # dynamic shapes keep shape arithmetic as pnnx.Expression/torch.arange layers ncnn lacks: retry static
        log["inputshape2_failed"] = _leftovers(tmp) or _tail(proc)[-1500:]
        proc = _run_pnnx(argv, folder)
    elif shape2 != shape1:
        log["inputshape2"] = shape2
    if proc.returncode != 0 or not tmp.is_file() or not tmp.with_suffix(".bin").is_file():
        raise ConversionError(f"pnnx failed (exit {proc.returncode}) converting {model.spec.name}: "
                              f"{_tail(proc).splitlines()[-1]}", detail=_tail(proc))
    log["pnnx_seconds"] = round(time.perf_counter() - start, 3)
    log["convert_seconds"] = round(trace_s + log["pnnx_seconds"], 3)
    log["pnnx_fp16_weights"] = fp16
    ignored = sorted({ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("ignore ")})
    if ignored:
        log["pnnx_ignored"] = ignored[:50]
    return log


def _leftovers(param: Path) -> list[str]:
    """Layer types pnnx left in ``param`` that ncnn does not implement (empty when all are ncnn layers)."""
    from harness.backends._ncnn_tools import parse_param, unregistered_layers

    if not param.is_file():
        return []
    try:
        return sorted({layer.type for layer in unregistered_layers(parse_param(param))})
    except Exception:  # an unreadable param is reported when ncnn loads it
        return []


def build_from_onnx(model: ExportedModel, tmp: Path, fp16: bool) -> dict[str, Any]:
    """Convert an ONNX-native model's file with pnnx's ONNX import (after ``_onnx_prep``: old-IR initializer
    inputs removed, opset >= 13) into ``tmp`` (.param) and ``tmp.with_suffix('.bin')``."""
    from harness.backends._onnx_prep import prepared

    folder = tmp.parent
    src, steps = prepared(model.onnx_path, folder / "prepared.onnx", min_opset=13)
    sizes = model.spec.default_sizes()
    shape = ",".join("[" + ",".join(str(sizes[d] if isinstance(d, str) else d) for d in t.shape) + "]"
                     + _PNNX_TYPES.get(t.dtype, "f32") for t in model.spec.inputs)
    argv = [str(pnnx_exe()), str(src.resolve()), f"inputshape={shape}", f"fp16={int(fp16)}",
            f"ncnnparam={tmp.name}", f"ncnnbin={tmp.with_suffix('.bin').name}", "ncnnpy=model_ncnn.py",
            "pnnxparam=model.pnnx.param", "pnnxbin=model.pnnx.bin", "pnnxpy=model_pnnx.py", "pnnxonnx=model.pnnx.onnx"]
    start = time.perf_counter()
    proc = _run_pnnx(argv, folder)
    if proc.returncode != 0 or not tmp.is_file() or not tmp.with_suffix(".bin").is_file():
        raise ConversionError(f"pnnx failed (exit {proc.returncode}) converting {model.spec.name} from ONNX: "
                              f"{_tail(proc).splitlines()[-1] if _tail(proc) else ''}", detail=_tail(proc))
    log: dict[str, Any] = {"converter": "pnnx ONNX import -> ncnn", "inputshape": shape,
                           "pnnx_seconds": round(time.perf_counter() - start, 3), "pnnx_fp16_weights": fp16}
    if steps:
        log["onnx_preparation"] = steps
    return log


def _run_pnnx(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=PNNX_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise ConversionError(f"pnnx did not finish in {PNNX_TIMEOUT_S} s") from exc


def _tail(proc: subprocess.CompletedProcess[str]) -> str:
    text = (proc.stdout + proc.stderr).strip()
    return text[-1500:] or "(no output)"
