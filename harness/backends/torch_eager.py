"""PyTorch eager: the reference, also selectable as a backend.

fp16 runs the module in half precision (real fp16 arithmetic, slow on CPU);
int8 uses PyTorch's dynamic quantization of Linear/LSTM layers. Both are
numerical references for what true low precision does, not deployment paths.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from harness.backends.base import Backend, BoundCall, Session
from harness.core.errors import UnsupportedPrecision
from harness.core.machine import module_version
from harness.core.precision import summarize
from harness.core.types import Feeds, Precision
from harness.model.reference import run_torch

if TYPE_CHECKING:
    from torch import nn

    from harness.model.export import ExportedModel


class TorchSession(Session):
    def __init__(self, module: nn.Module, model: ExportedModel, dtype: str | None, executed: str,
                 settings: dict[str, Any]) -> None:
        self.module = module
        self.model = model
        self.dtype = dtype
        self.executed_precision = executed
        self.settings = settings

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        outs = run_torch(self.module, feeds, self.model.input_names, self.model.output_names, self.dtype)
        return {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in outs.items()}

    def bind(self, feeds: Feeds) -> BoundCall:
        """Input tensors made (and cast to the session's dtype) once; the call is ``module(*tensors)`` under
        ``inference_mode`` with the MHA fast path off, as in ``run`` (the graph the verdict checked)."""
        import torch

        from harness.model.reference import mha_fastpath_disabled

        tensors = []
        for name in self.model.input_names:
            t = torch.from_numpy(np.ascontiguousarray(feeds[name]))
            tensors.append(t.to(getattr(torch, self.dtype)) if self.dtype and t.is_floating_point() else t)
        module = self.module

        def call() -> object:
            with torch.inference_mode(), mha_fastpath_disabled():
                return module(*tensors)

        return BoundCall(call, keep=(tensors,))


class TorchBackend(Backend):
    """PyTorch eager on CPU (or CUDA when ``device='cuda'`` and a GPU is present)."""

    name: ClassVar[str] = "torch"
    sdk_modules: ClassVar[tuple[str, ...]] = ("torch",)
    aliases: ClassVar[tuple[str, ...]] = ("pytorch", "eager")
    needs_onnx: ClassVar[bool] = False
    slow_precisions: ClassVar[frozenset[Precision]] = frozenset({Precision.FP16, Precision.INT8})

    def unavailable_reason(self) -> str | None:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return "torch: Python package 'torch' not installed"
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                return "torch: device 'cuda' requested but torch.cuda.is_available() is False (CPU build or no GPU)"
        return None

    def version(self) -> str:
        return module_version("torch")

    def load(self, model: ExportedModel, precision: Precision, workdir: Path,
             calibration: Sequence[Feeds] | None = None) -> Session:
        import copy

        import torch

        torch.set_num_threads(self.threads)
        module = copy.deepcopy(model.module())
        settings: dict[str, Any] = {"threads": self.threads, "device": self.device}
        if precision is Precision.FP32:
            return TorchSession(module, model, None, "fp32", settings)
        if precision is Precision.FP16:
            return TorchSession(module.half(), model, "float16", "fp16", {**settings, "recipe": "module.half()"})
        # per-channel weights for Linear (torch's per_channel_dynamic_qconfig); LSTM takes the default qconfig
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

        qconfig = {torch.nn.Linear: per_channel_dynamic_qconfig, torch.nn.LSTM: default_dynamic_qconfig}
        quantized = torch.ao.quantization.quantize_dynamic(module, qconfig, dtype=torch.qint8)
        counts = _layer_types(quantized)
        if counts.get("int8", 0) == 0:
            raise UnsupportedPrecision("torch int8: dynamic quantization applies to Linear/LSTM layers only "
                                       "and this model has none")
        return TorchSession(quantized, model, None, summarize(counts),
                            {**settings, "recipe": "torch.ao dynamic quantization, qint8 weights: per-channel "
                                                 "for Linear, per-tensor for LSTM"})


def _layer_types(module: nn.Module) -> Counter[str]:
    """int8 for dynamically quantized layers, fp32 for remaining float conv/linear/rnn layers."""
    from torch import nn

    counts: Counter[str] = Counter()
    for m in module.modules():
        kind = type(m).__module__
        if ("quantized" in kind and hasattr(m, "weight")) or ("quantized" in kind and type(m).__name__ == "LSTM"):
            counts["int8"] += 1
        elif isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear | nn.LSTM | nn.GRU | nn.MultiheadAttention):
            counts["fp32"] += 1
    return counts
