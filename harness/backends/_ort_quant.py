"""ONNX Runtime's quantization tooling, wrapped once for every backend that feeds on QDQ ONNX.

Recipes, as ORT's quantization guide gives them per model family:

* CNNs: ``static_qdq`` with u8 activations and s8 per-channel weights, MinMax
  calibration over the model's calibration set, after ``quant_pre_process``.
  ``Softmax`` stays float: ORT pins a quantized Softmax output to [0, 1] in
  steps of 1/255, so probabilities below 0.002 (all 1000 of a flat ImageNet
  softmax) become 0.
* transformers (attention: activation x activation MatMuls): ``dynamic`` s8
  per-channel weights on MatMul/Gemm, activations quantized at run time
  (measured on MiniLM-L6: embedding cosine >= 0.992 to FP32 on held-out
  sentences; static QDQ over the whole encoder: 0.766).

TensorRT's parser needs signed, symmetric Q/DQ pairs on the weighted layers only
(``_trt_tools.quantize_qdq``). Old-IR and opset < 13 files are prepared first
(``_onnx_prep``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.types import Feeds


class CalibrationReader:
    """onnxruntime.quantization's CalibrationDataReader over host feeds."""

    def __init__(self, calibration: Sequence[Feeds]) -> None:
        self._it: Iterator[Feeds] = iter(calibration)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next calibration sample, or None when all were read."""
        nxt = next(self._it, None)
        return dict(nxt) if nxt is not None else None


def pre_process(src: Path, out: Path) -> None:
    """``quant_pre_process`` (symbolic shape inference first; plain ONNX shape inference where it fails)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(out), skip_symbolic_shape=False)
    except Exception:  # symbolic shape inference fails on some graphs
        quant_pre_process(str(src), str(out), skip_symbolic_shape=True)


KEEP_FLOAT = ("Softmax",)
"""Op types static QDQ leaves in float (see the module docstring)."""


def static_qdq(src: Path, out: Path, calibration: Sequence[Feeds], *, signed_activations: bool = False,
               symmetric: bool = False, reduce_range: bool = False, op_types: Sequence[str] | None = None,
               extra_options: dict[str, Any] | None = None) -> list[str]:
    """Static QDQ quantization: per-channel s8 weights, u8 (or s8) activations, MinMax calibration.

    ``op_types`` None quantizes every op type present except ``KEEP_FLOAT``. Returns the preparation steps.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from harness.backends._onnx_prep import prepared, shape_computing_nodes

    source, steps = prepared(src, out.with_name("prepared.onnx"), min_opset=13)
    pre = out.with_name("pre.onnx")
    pre_process(source, pre)
    shape_nodes = shape_computing_nodes(pre)
    if shape_nodes:
        steps.append(f"{len(shape_nodes)} shape/scale-computing nodes left float")
    if op_types is None:
        op_types = sorted({n.op_type for n in onnx.load(str(pre), load_external_data=False).graph.node}
                          - set(KEEP_FLOAT))
    options = dict(extra_options or {})
    if symmetric:
        options.update({"ActivationSymmetric": True, "WeightSymmetric": True})
    quantize_static(str(pre), str(out), CalibrationReader(calibration), quant_format=QuantFormat.QDQ,
                    per_channel=True, reduce_range=reduce_range, calibrate_method=CalibrationMethod.MinMax,
                    activation_type=QuantType.QInt8 if signed_activations else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, op_types_to_quantize=list(op_types) if op_types else None,
                    nodes_to_exclude=shape_nodes, extra_options=options)
    return steps


DYNAMIC_OPS = ("MatMul", "Gemm")


def dynamic(src: Path, out: Path, *, per_channel: bool = True, reduce_range: bool = False) -> list[str]:
    """Dynamic quantization of MatMul/Gemm: s8 (per-channel) weights, activations quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from harness.backends._onnx_prep import prepared

    source, steps = prepared(src, out.with_name("prepared.onnx"), min_opset=13 if per_channel else None)
    quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, per_channel=per_channel,
                     reduce_range=reduce_range, op_types_to_quantize=list(DYNAMIC_OPS))
    return steps


def reduce_range_needed() -> bool:
    """7-bit weights on x86 CPUs without VNNI, as ONNX Runtime's quantization guide advises.

    Without VNNI, ORT's u8s8 kernels use VPMADDUBSW, whose int16 intermediate
    saturates: measured here (AVX2 EPYC), mobilenet_tiny's cosine drops to 0.968
    at full range and is 0.99997 with reduce_range. ``HARNESS_ORT_REDUCE_RANGE=0|1``
    overrides the choice.
    """
    env = os.environ.get("HARNESS_ORT_REDUCE_RANGE")
    if env is not None:
        return env.strip().lower() in ("1", "true", "yes")
    import platform

    from harness.core.machine import cpu_flags

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    return not any("vnni" in f or f.startswith("amx") for f in cpu_flags())
