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
from harness.backends.base import Backend, BoundCall, Session, missing_package_reason
from harness.core.cache import cached, feeds_digest
from harness.core.errors import ConversionError
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

    def bind(self, feeds: Feeds) -> BoundCall:
        """IO binding: inputs bound once (CPU arrays, or copied to the device once for CUDA/TensorRT EPs),
        outputs into OrtValues allocated once at their shapes from one ``run``; the call is
        ``run_with_iobinding`` alone (no feed dict, no output list, no allocation per call)."""
        import onnxruntime as ort

        held = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        outputs = self.session.run(self.output_names, held)  # output shapes at these feeds
        on_device = self.session.get_providers()[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        device = ("cuda", 0) if on_device else ("cpu", 0)
        binding = self.session.io_binding()
        values = []
        for name, array in held.items():
            if on_device:
                values.append(ort.OrtValue.ortvalue_from_numpy(array, *device))
                binding.bind_ortvalue_input(name, values[-1])
            else:
                binding.bind_cpu_input(name, array)
        for name, out in zip(self.output_names, outputs, strict=True):
            values.append(ort.OrtValue.ortvalue_from_numpy(np.empty_like(out), *device))
            binding.bind_ortvalue_output(name, values[-1])
        run = self.session.run_with_iobinding
        return BoundCall(lambda: run(binding), keep=(held, values, binding))


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
            path = cached(model.artifact("ort-fp16.onnx"), lambda tmp: _to_fp16(model, tmp), extra_files=(".variant",))
            variant = path.with_suffix(".variant").read_text()
            recipe = {"recipe": f"onnxconverter_common float16 (keep_io_types=True), graph: {variant}"}
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
        reduce_range = quant.reduce_range_needed()
        key = feeds_digest(calibration, length=12) + ("-rr" if reduce_range else "")
        recipe = {"recipe": "static QDQ, QUInt8 activations, QInt8 per-channel weights, MinMax calibration",
                  "calibration_samples": len(calibration), "quant_pre_process": True, "reduce_range": reduce_range}
        try:
            path = cached(model.artifact(f"ort-int8-static-{key}.onnx"),
                          lambda tmp: quant.static_qdq(model.onnx_path, tmp, calibration, reduce_range=reduce_range))
            return path, recipe
        except Exception as exc:
            static_error = f"{type(exc).__name__}: {exc}"
        try:
            path = cached(model.artifact("ort-int8-dynamic.onnx"), lambda tmp: quant.dynamic(model.onnx_path, tmp))
        except Exception as exc:
            raise ConversionError(f"ort int8: static quantization failed ({static_error}) and dynamic "
                                  f"quantization failed ({type(exc).__name__}: {exc})") from exc
        return path, {"recipe": "dynamic quantization, QInt8 weights (static QDQ failed)",
                      "static_error": static_error[:500]}


def _to_fp16(model: ExportedModel, out: Path) -> None:
    """FP16 graph with FP32 I/O: plain conversion first, then after onnxslim simplification.

    Each candidate is loaded by ORT in a child process before it is accepted:
    some converted graphs fail ORT's type check and some (simplified
    transformers here) crash ORT's session creation outright.
    """
    import onnx
    from onnxconverter_common import float16

    failures = []
    for variant in ("plain", "onnxslim"):
        graph = onnx.load(str(model.onnx_path))
        try:
            if variant == "onnxslim":
                import onnxslim

                graph = onnxslim.slim(graph)
            onnx.save(float16.convert_float_to_float16(graph, keep_io_types=True), str(out))
        except Exception as exc:
            failures.append(f"{variant}: conversion raised {type(exc).__name__}: {exc}")
            continue
        problem = _load_problem(out)
        if problem is None:
            out.with_suffix(".variant").write_text(variant)
            return
        failures.append(f"{variant}: {problem}")
    raise ConversionError("ort fp16: no FP16 conversion loads in onnxruntime: " + "; ".join(failures))


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
    return "onnxruntime refused it: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:300]


