"""ONNX Runtime: CPU EP (CUDA / TensorRT EPs first when onnxruntime-gpu sees a GPU).

fp32 runs the export; fp16 converts the simplified graph with onnxconverter-common
(FP32 I/O kept); int8 is static post-training QDQ quantization (u8 activations,
s8 per-channel weights, MinMax calibration over the shared calibration sets,
``quant_pre_process`` first), dynamic quantization only where static fails.
The executed precision is read from ORT's own profiler: the input type of every
compute kernel that really ran after graph optimization.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from harness.backends import _ort_quant as quant
from harness.backends.base import Backend, Session, missing_package_reason
from harness.core.cache import cached, feeds_digest
from harness.core.errors import ConversionError, first_line
from harness.core.machine import module_version
from harness.core.precision import summarize
from harness.core.types import Feeds, Precision

if TYPE_CHECKING:
    from harness.model.export import ExportedModel

COMPUTE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedGemm", "FusedMatMul", "NhwcFusedConv",
               "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm", "LSTM", "GRU", "RNN",
               "Attention", "MultiHeadAttention", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul",
               "MatMulIntegerToFloat", "DynamicQuantizeLinear", "QAttention"}
INTEGER_OPS = {"MatMulIntegerToFloat", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "QAttention"}


class OrtSession(Session):
    def __init__(self, session: Any, artifact: Path, settings: dict[str, Any], executed: str) -> None:
        self.session = session
        self.artifact = artifact
        self.settings = settings
        self.executed_precision = executed
        self.output_names = [o.name for o in session.get_outputs()]

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, dict(feeds)), strict=True))


class OrtBackend(Backend):
    """ONNX Runtime with the best execution provider present."""

    name: ClassVar[str] = "ort"
    aliases: ClassVar[tuple[str, ...]] = ("onnxruntime",)

    def unavailable_reason(self) -> str | None:
        return missing_package_reason("ort", "onnxruntime", "onnx")

    def version(self) -> str:
        v = module_version("onnxruntime")
        return v if v != "not installed" else module_version("onnxruntime-gpu")

    def providers(self) -> list[str]:
        """Execution providers to use, best first (GPU EPs only on device cuda/trt or auto)."""
        import onnxruntime as ort

        have = ort.get_available_providers()
        wanted = {"cpu": [], "cuda": ["CUDAExecutionProvider"],
                  "trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
                  "auto": ["TensorrtExecutionProvider", "CUDAExecutionProvider"]}.get(self.device, [])
        return [p for p in wanted if p in have] + ["CPUExecutionProvider"]

    def load(self, model: ExportedModel, precision: Precision, workdir: Path,
             calibration: Sequence[Feeds] | None = None) -> Session:
        recipe: dict[str, Any] = {}
        if precision is Precision.FP32:
            path = model.onnx_path
        elif precision is Precision.FP16:
            path = cached(model.artifact("ort-fp16-v2.onnx"), lambda tmp: _to_fp16(model, tmp))
            recipe = {"recipe": "onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)"}
        else:
            if not calibration:
                raise ConversionError("ort int8: static quantization needs calibration data and none was given")
            path, recipe = self._int8(model, calibration)
        return self._session(path, precision, recipe, model)

    def _options(self) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        return so

    def _session(self, path: Path, precision: Precision, recipe: dict[str, Any], model: ExportedModel) -> Session:
        import onnxruntime as ort

        providers = self.providers()
        try:
            session = ort.InferenceSession(str(path), self._options(), providers=providers)
        except Exception as exc:
            raise ConversionError(f"onnxruntime could not load {path.name}: {exc}") from exc
        executed = self._executed_precision(path, providers, model,
                                            storage="fp16" if precision is Precision.FP16 else None)
        settings = {"threads": self.threads, "inter_op_threads": 1, "providers": session.get_providers(),
                    "graph_optimization": "ORT_ENABLE_ALL", **recipe}
        return OrtSession(session, path, settings, executed)

    def _executed_precision(self, path: Path, providers: list[str], model: ExportedModel, storage: str | None) -> str:
        """Run once under ORT's profiler and count the input types of the compute kernels that ran."""
        import onnxruntime as ort

        so = self._options()
        so.enable_profiling = True
        so.profile_file_prefix = str(path.parent / f".ort-profile-{os.getpid()}")
        session = ort.InferenceSession(str(path), so, providers=providers)
        session.run(None, model.example_feeds())
        profile = Path(session.end_profiling())
        try:
            events = json.loads(profile.read_text())
        finally:
            profile.unlink(missing_ok=True)
        counts: Counter[str] = Counter()
        for ev in events:
            args = ev.get("args", {})
            op = args.get("op_name")
            if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time") or op not in COMPUTE_OPS:
                continue
            types = [next(iter(t)) for t in args.get("input_type_shape", []) if t]
            counts["int8" if op in INTEGER_OPS else (types[0] if types else "unknown")] += 1
        if storage is not None and counts and set(counts) <= {"float"}:
            return summarize(counts, storage=storage)
        return summarize(counts)

    def _int8(self, model: ExportedModel, calibration: Sequence[Feeds]) -> tuple[Path, dict[str, Any]]:
        """ORT's recipe for the model's family (see ``_ort_quant``), cached by calibration and settings."""
        from harness.backends._onnx_prep import has_attention

        reduce_range = quant.reduce_range_needed()
        transformer = has_attention(model.onnx_path)
        key = feeds_digest(calibration, salt=f"v3|{transformer}|{reduce_range}", length=12)
        steps: list[str] = []
        if transformer:
            recipe = {"recipe": "dynamic quantization of MatMul/Gemm, QInt8 per-channel weights, activations "
                                "quantized at run time (ORT's recipe for transformer encoders)",
                      "family": "transformer", "reduce_range": reduce_range}
            build = lambda tmp: steps.extend(  # noqa: E731
                quant.dynamic(model.onnx_path, tmp, per_channel=True, reduce_range=reduce_range))
            name = f"ort-int8-dynamic-{key}.onnx"
        else:
            recipe = {"recipe": "static QDQ, QUInt8 activations, QInt8 per-channel weights, MinMax calibration, "
                                f"{'/'.join(quant.KEEP_FLOAT)} kept float", "family": "cnn",
                      "calibration_samples": len(calibration), "quant_pre_process": True,
                      "reduce_range": reduce_range}
            build = lambda tmp: steps.extend(  # noqa: E731
                quant.static_qdq(model.onnx_path, tmp, calibration, reduce_range=reduce_range))
            name = f"ort-int8-static-{key}.onnx"
        try:
            path = cached(model.artifact(name), build)
        except Exception as exc:
            raise ConversionError(f"ort int8: onnxruntime.quantization failed ({recipe['recipe']}): "
                                  f"{type(exc).__name__}: {first_line(exc)}", detail=str(exc)) from exc
        if steps:
            recipe["preparation"] = steps
        return path, recipe


def _to_fp16(model: ExportedModel, out: Path) -> None:
    """FP16 graph with FP32 I/O by ORT's own converter (``onnxruntime.transformers.float16``, keep_io_types),
    after removing initializers from old-IR graph inputs; loaded once in a child process before it is used,
    since a converted graph that ORT cannot type-check (or that crashes session creation) must not take the
    case's process with it."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from harness.backends._onnx_prep import drop_initializer_inputs

    try:
        graph = drop_initializer_inputs(onnx.load(str(model.onnx_path)))
        onnx.save(convert_float_to_float16(graph, keep_io_types=True), str(out))
    except Exception as exc:
        raise ConversionError(f"ort fp16: onnxruntime.transformers.float16 failed: {type(exc).__name__}: "
                              f"{first_line(exc)}", detail=str(exc)) from exc
    problem = _load_problem(out)
    if problem is not None:
        raise ConversionError(f"ort fp16: onnxruntime cannot load the FP16 graph its own converter wrote: "
                              f"{first_line(problem)}", detail=problem)


def _load_problem(path: Path) -> str | None:
    """None if ORT can create a session for ``path`` in a child process, else what went wrong."""
    import subprocess
    import sys

    code = "import sys, onnxruntime as o; o.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])"
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=600)
    if proc.returncode == 0:
        return None
    if proc.returncode < 0:
        import signal

        return f"onnxruntime crashed loading it ({signal.Signals(-proc.returncode).name})"
    lines = proc.stderr.strip().splitlines() or ["?"]
    return f"onnxruntime refused it: {lines[-1]}\n{proc.stderr[-5000:]}"


