"""OpenVINO precision audit: what the compiled model really computes with.

Reads the runtime (execution) graph of a compiled model: every executed layer
carries ``layerType``, ``runtimePrecision``, ``outputPrecisions`` and
``primitiveType`` (the kernel, e.g. ``brgconv_avx2_f32``, ``jit_avx2_I8``) in its
rt_info. The kernel's type suffix is what did the arithmetic; ``runtimePrecision``
alone can mislead: with fp16-compressed weights on an fp32-only CPU the CPU
plugin reports ``f16`` for a Convolution whose kernel is ``brgconv_avx2_f32``
and whose activations are f32 (weights decompressed to f32: fp16 storage,
fp32 compute).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from harness.core.precision import normalize, summarize

COMPUTE_LAYERS = frozenset({
    "Convolution", "GroupConvolution", "Deconvolution", "BinaryConvolution", "FullyConnected", "MatMul", "Gemm",
    "RNNSeq", "RNNCell", "LSTMSequence", "GRUSequence", "RNNSequence", "LSTMCell", "GRUCell",
    "MHA", "ScaledAttn", "ScaledDotProductAttention", "LLMMLP", "QKVProjection", "PagedAttention",
})
"""CPU-plugin layer types that do the multiply-accumulate work ("Subgraph" counts when it fused a MatMul)."""

_KERNEL_TYPES = frozenset({"f32", "f16", "bf16", "i8", "u8", "i4", "u4", "f64", "fp32", "fp16", "int8"})
_NOT_EXECUTED = frozenset({"Const", "Input", "Output", "Parameter", "Result"})


@dataclass(frozen=True)
class Audit:
    """What the runtime model says ran.

    Attributes:
        executed: ``harness.core.precision.summarize`` of the compute layers' kernel types.
        kernel_precisions: layer type -> {kernel type: count} for compute layers.
        runtime_precisions: layer type -> {``runtimePrecision`` as reported: count} for compute layers.
        fp16_weights_fp32_kernels: compute layers whose weights are f16 but whose kernel is f32.
        hint: the compiled model's INFERENCE_PRECISION_HINT read back (``f32``, ``f16``, ``bf16``).
    """

    executed: str
    kernel_precisions: dict[str, dict[str, int]] = field(default_factory=dict)
    runtime_precisions: dict[str, dict[str, int]] = field(default_factory=dict)
    fp16_weights_fp32_kernels: int = 0
    hint: str = "unknown"


def _rt(op: Any, key: str) -> str:
    info = op.get_rt_info()
    return info[key].astype(str) if key in info else ""


def kernel_precision(primitive_type: str, runtime_precision: str) -> str:
    """The arithmetic type of one layer: the kernel name's type suffix, else ``runtimePrecision``."""
    suffix = primitive_type.rsplit("_", 1)[-1].lower() if "_" in primitive_type else ""
    return normalize(suffix if suffix in _KERNEL_TYPES else runtime_precision or "unknown")


def is_compute(layer_type: str, original_names: str) -> bool:
    """Whether a runtime layer does the model's heavy arithmetic (conv, matmul, recurrent, attention)."""
    if layer_type in COMPUTE_LAYERS:
        return True
    return layer_type == "Subgraph" and "matmul" in original_names.lower()


def audit(compiled: Any) -> Audit:
    """Count the compute layers of ``compiled`` (an ``ov.CompiledModel``) by the type their kernel ran in."""
    counts: Counter[str] = Counter()
    fallback: Counter[str] = Counter()
    kernels: dict[str, Counter[str]] = {}
    reported: dict[str, Counter[str]] = {}
    f16_storage = 0
    for op in compiled.get_runtime_model().get_ordered_ops():
        layer = _rt(op, "layerType")
        runtime = _rt(op, "runtimePrecision")
        kernel = kernel_precision(_rt(op, "primitiveType"), runtime)
        if layer not in _NOT_EXECUTED and layer != "Reorder" and kernel not in ("dynamic", "unknown", ""):
            fallback[kernel] += 1
        if not is_compute(layer, _rt(op, "originalLayersNames")):
            continue
        counts[kernel] += 1
        kernels.setdefault(layer, Counter())[kernel] += 1
        reported.setdefault(layer, Counter())[runtime] += 1
        input_types = {normalize(i.get_element_type().to_string()) for i in op.inputs()}
        if kernel == "fp32" and (normalize(runtime) == "fp16" or "fp16" in input_types):
            f16_storage += 1
    if counts:
        executed = summarize(counts, storage="fp16" if f16_storage else None)
    else:  # no conv/matmul/rnn at all: every executed layer counts
        executed = summarize(fallback)
    try:
        hint = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    except Exception:  # devices without the property (AUTO/NPU) still get a layer audit
        hint = "unknown"
    return Audit(executed, {k: dict(v) for k, v in kernels.items()}, {k: dict(v) for k, v in reported.items()},
                 f16_storage, hint)


def has_attention(ov_model: Any) -> bool:
    """True when the graph has attention: SDPA, or Softmax plus a MatMul of two activations (Q.K^T)."""
    types = {op.get_type_name() for op in ov_model.get_ops()}
    if "ScaledDotProductAttention" in types:
        return True
    if "Softmax" not in types:
        return False
    return any(op.get_type_name() == "MatMul" and not any(_is_weight(op.input_value(i).get_node()) for i in range(2))
               for op in ov_model.get_ops())


def _is_weight(node: Any) -> bool:
    """A Constant, possibly behind Convert/Reshape/Transpose/FakeQuantize chains."""
    for _ in range(8):
        kind = node.get_type_name()
        if kind == "Constant":
            return True
        if kind not in ("Convert", "Reshape", "Transpose", "FakeQuantize", "FakeConvert", "Multiply", "Subtract"):
            return False
        node = node.input_value(0).get_node()
    return False
