"""The GPU-free half of the TensorRT backend: pure functions, unit-tested on any machine.

``harness.backends.tensorrt`` does everything that needs ``tensorrt`` and a
CUDA device; this module holds what can be decided without them: the
availability probe, optimization-profile shapes, calibration batching and its
cache file, the engine cache key, the explicit-quantization (QDQ) ONNX that
TensorRT accepts, and the reading of the engine inspector's JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.core.types import Feeds

if TYPE_CHECKING:
    from harness.core.spec import ModelSpec

NOT_INSTALLED = ("trt: Python package 'tensorrt' not installed (pip install -e '.[trt]'; "
                 "needs an NVIDIA GPU with CUDA)")
NO_DEVICE = "trt: no CUDA device visible (torch.cuda.is_available() is False / cudaGetDeviceCount=0)"


# --- availability -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrtEnvironment:
    """What the probe found: the facts ``unavailable_reason`` decides on."""

    tensorrt_found: bool
    import_error: str | None = None
    torch_cuda: bool = False
    torch_version: str = "not installed"
    cuda_device_count: int | None = None  # cudaGetDeviceCount via cuda-python; None when cuda-python is absent


def unavailable_reason(env: TrtEnvironment) -> str | None:
    """None when TensorRT can run here, else the precise reason (the skip reason)."""
    if not env.tensorrt_found:
        return NOT_INSTALLED
    if env.import_error is not None:
        return (f"trt: Python package 'tensorrt' is installed but 'import tensorrt' failed: {env.import_error} "
                "(the TensorRT libraries must match the wheel and be loadable; needs an NVIDIA GPU with CUDA)")
    if env.torch_cuda:
        return None
    if env.cuda_device_count:
        return (f"trt: cudaGetDeviceCount={env.cuda_device_count} but torch {env.torch_version} reports "
                "torch.cuda.is_available() False; this backend allocates device buffers with torch CUDA tensors: "
                "install a CUDA build of torch")
    return NO_DEVICE


def probe_environment() -> TrtEnvironment:
    """Look (without building anything) for tensorrt, whether it imports, and a CUDA device."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return TrtEnvironment(tensorrt_found=False)
    try:
        importlib.import_module("tensorrt")
    except Exception as exc:  # any import failure (missing .so, ABI mismatch) is the reason itself
        return TrtEnvironment(tensorrt_found=True, import_error=f"{type(exc).__name__}: {exc}")
    torch_cuda, torch_version = False, "not installed"
    try:
        import torch

        torch_cuda, torch_version = bool(torch.cuda.is_available()), torch.__version__
    except ImportError:
        pass
    return TrtEnvironment(True, None, torch_cuda, torch_version, _cuda_device_count())


def _cuda_device_count() -> int | None:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            return None
    err, count = cudart.cudaGetDeviceCount()
    return int(count) if int(err) == 0 else 0


# --- optimization profiles ---------------------------------------------------------------------------------------


def profile_shapes(spec: ModelSpec) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """Per input ``(min, opt, max)``: min = smallest declared size, opt = the export size, max = largest.

    Static inputs get ``min == opt == max``.
    """
    def pick(fn: Any) -> dict[str, int]:
        return {axis: fn(sizes) for axis, sizes in spec.dynamic_sizes.items()}

    low, opt, high = pick(min), pick(lambda s: s[0]), pick(max)
    return {t.name: (t.concrete_shape(low), t.concrete_shape(opt), t.concrete_shape(high)) for t in spec.inputs}


# --- INT8 calibration --------------------------------------------------------------------------------------------


def calibration_batches(calibration: Sequence[Feeds], input_names: Sequence[str], batch_size: int = 1,
                        dtypes: Mapping[str, Any] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Contiguous batches per input name: ``batch_size`` consecutive feeds joined on axis 0.

    Values are cast to ``dtypes[name]`` (float32 by default). A last, incomplete
    group is dropped: TensorRT calibrates at one fixed shape.
    """
    if batch_size < 1:
        raise ValueError(f"calibration batch size must be >= 1, got {batch_size}")
    if len(calibration) < batch_size:
        raise ValueError(f"{len(calibration)} calibration samples cannot fill one batch of {batch_size}")
    for start in range(0, len(calibration) - batch_size + 1, batch_size):
        group = calibration[start:start + batch_size]
        batch = {}
        for name in input_names:
            missing = [start + i for i, feeds in enumerate(group) if name not in feeds]
            if missing:
                raise KeyError(f"calibration sample(s) {missing} have no input {name!r} "
                               f"(they have {sorted(group[0])})")
            dtype = np.dtype((dtypes or {}).get(name, np.float32))
            arrays = [np.asarray(feeds[name]) for feeds in group]
            batch[name] = np.ascontiguousarray(np.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0],
                                               dtype=dtype)
        yield batch


class CalibrationCache:
    """TensorRT's calibration cache file: the read/write half of ``IInt8EntropyCalibrator2``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> bytes | None:
        """The cached scales, or None (TensorRT then calibrates on the batches)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return data or None

    def write(self, data: bytes | memoryview) -> None:
        """Store the scales TensorRT computed, atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(bytes(data))
        tmp.replace(self.path)


# --- engine cache key --------------------------------------------------------------------------------------------


def engine_cache_key(onnx_sha256: str, precision: str, trt_version: str, gpu_name: str, *,
                     calibration: str | None = None, **settings: Any) -> str:
    """Hash naming a built engine: the ONNX bytes, precision, TensorRT version, GPU, calibration, build settings."""
    payload = {"onnx": onnx_sha256, "precision": precision, "trt": trt_version, "gpu": gpu_name,
               "calibration": calibration, **settings}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- explicit quantization ---------------------------------------------------------------------------------------

QDQ_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def quantize_qdq(src: Path, out: Path, calibration: Sequence[Feeds]) -> None:
    """Static QDQ ONNX that TensorRT accepts: signed INT8, symmetric (zero point 0) activations and weights.

    ORT's recipe for its own CPU EP (u8 asymmetric activations) is rejected by
    TensorRT's ONNX parser ("zero point must be 0", INT8 only), hence QInt8 with
    ``ActivationSymmetric``; biases stay float (ORT's int32 bias DequantizeLinear
    is no INT8 Q/DQ pair); only the inputs of weighted layers are quantized.
    """
    from harness.backends import _ort_quant

    _ort_quant.static_qdq(src, out, calibration, signed_activations=True, symmetric=True, op_types=QDQ_OPS,
                          extra_options={"QuantizeBias": False})


def trt_qdq_violations(path: Path) -> list[str]:
    """Q/DQ nodes TensorRT's ONNX parser would reject (zero point not INT8 or not 0); empty when all are fine."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    bad = []
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3 or not node.input[2]:
            continue
        zp = inits.get(node.input[2])
        if zp is None:
            bad.append(f"{node.name}: zero point {node.input[2]!r} is not an initializer")
            continue
        arr = numpy_helper.to_array(zp)
        if arr.dtype != np.int8 or np.any(arr != 0):
            bad.append(f"{node.name}: zero point {arr.dtype} {arr.ravel()[:4].tolist()} (TensorRT needs int8 0)")
    return bad


# --- engine inspector --------------------------------------------------------------------------------------------

# TensorRT 10 IEngineInspector.get_engine_information(LayerInformationFormat.JSON), built with
# ProfilingVerbosity.DETAILED, returns {"Layers": [...], "Bindings": [...]}; each layer has "Name", "LayerType",
# "ParameterType", "Inputs"/"Outputs" = [{"Name", "Dimensions", "Format/Datatype"}], "Weights"/"Bias" =
# {"Type", "Count"}, "TacticName", "TacticValue" (developer guide, "Engine Inspector" in "Engine Tools and
# Debugging", docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/engine-tools.html). With
# LAYER_NAMES_ONLY, "Layers" holds bare strings. TensorRT 11 splits "Format/Datatype" (migration guide,
# "Migrating IEngineInspector Usage from TensorRT 10.x to 11.x"); "DataType" keys are read too. A layer's
# precision is that of its first input, as trt-engine-explorer (NVIDIA/TensorRT tools/experimental) does.
_TYPE_WORDS = {"fp32": "fp32", "float": "fp32", "fp16": "fp16", "half": "fp16", "bfloat16": "bf16", "bf16": "bf16",
               "int8": "int8", "uint8": "int8", "fp8": "fp8", "int4": "int4", "fp4": "fp4", "int32": "int32",
               "int64": "int64", "bool": "bool", "double": "fp64"}
_TYPE_RE = re.compile(r"\b(" + "|".join(sorted(_TYPE_WORDS, key=len, reverse=True)) + r")\b", re.IGNORECASE)
COMPUTE_LAYERS = {"Convolution", "Deconvolution", "MatrixMultiply", "FullyConnected", "Gemm", "RNN", "RNNv2",
                  "Myelin", "kgen", "Einsum", "Attention"}
NUMERIC = {"fp32", "fp16", "bf16", "int8", "fp8", "int4", "fp4", "fp64"}


def tensor_dtype(tensor: Mapping[str, Any]) -> str | None:
    """fp32/fp16/int8/... of one inspector tensor entry, or None when the entry has no type."""
    for key in ("DataType", "Datatype", "Format/Datatype", "Format/DataType"):
        value = tensor.get(key)
        if isinstance(value, str) and (m := _TYPE_RE.search(value)):
            return _TYPE_WORDS[m.group(1).lower()]
    return None


def layer_dtype(layer: Mapping[str, Any]) -> str | None:
    """The precision a layer computes in: its first typed input, else its first typed output."""
    if isinstance(layer.get("Precision"), str):
        found = _TYPE_RE.search(layer["Precision"])
        return _TYPE_WORDS[found.group(1).lower()] if found else None
    for tensor in [*layer.get("Inputs", []), *layer.get("Outputs", [])]:
        if isinstance(tensor, Mapping) and (dtype := tensor_dtype(tensor)) is not None:
            return dtype
    return None


def inspector_dtype_counts(info: str | Mapping[str, Any]) -> Counter[str]:
    """Compute-layer count per numeric type from the inspector's engine JSON.

    Counts layers whose ``ParameterType``/``LayerType`` is a compute kind
    (convolution, matrix multiply, RNN, Myelin/kgen fused graphs); when there
    are none, every layer with a numeric type. Raises ValueError when the engine
    was not built with ``ProfilingVerbosity.DETAILED``.
    """
    data = json.loads(info) if isinstance(info, str) else info
    layers = data.get("Layers", []) if isinstance(data, Mapping) else data
    if layers and all(isinstance(layer, str) for layer in layers):
        raise ValueError("the engine inspector returned layer names only: build the engine with "
                         "config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED")
    typed = [(layer, layer_dtype(layer)) for layer in layers if isinstance(layer, Mapping)]
    typed = [(layer, dtype) for layer, dtype in typed if dtype in NUMERIC]

    def is_compute(layer: Mapping[str, Any]) -> bool:
        ptype, ltype = str(layer.get("ParameterType", "")), str(layer.get("LayerType", ""))
        return ptype in COMPUTE_LAYERS or ltype in COMPUTE_LAYERS or any(
            word in ltype for word in ("Convolution", "MatrixMultiply", "Gemm"))

    compute = [dtype for layer, dtype in typed if is_compute(layer)]
    return Counter(compute or [dtype for _, dtype in typed])
