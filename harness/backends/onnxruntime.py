"""ONNX Runtime: CPU EP (CUDA / TensorRT EPs first when onnxruntime-gpu sees a GPU).

fp32 runs the export; fp16 converts the simplified graph with onnxconverter-common
(FP32 I/O kept); int8 is static post-training QDQ quantization (u8 activations,
s8 per-channel weights, MinMax calibration over the shared calibration sets,
``quant_pre_process`` first), dynamic quantization only where static fails.
The executed precision is read lazily: at fp16/int8 from ORT's own profiler (the
input type of every compute kernel that really ran after graph optimization, from
the session's own runs), at fp32 from the graph's types (see ``OrtBackend._session``).
One InferenceSession per case; building it runs nothing, so a run-time error is
the run's ``error``, never a build failure.
"""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from harness.backends import _ort_quant as quant
from harness.backends._ort_values import extended, run_ort_values
from harness.backends.base import Backend, BoundCall, Session, missing_package_reason
from harness.core.cache import cached, feeds_digest
from harness.core.errors import ConversionError, first_line
from harness.core.machine import module_version
from harness.core.precision import summarize
from harness.core.types import Cause, Feeds, Precision

if TYPE_CHECKING:
    from harness.model.export import ExportedModel

COMPUTE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedGemm", "FusedMatMul", "NhwcFusedConv",
               "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm", "LSTM", "GRU", "RNN",
               "Attention", "MultiHeadAttention", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul",
               "MatMulIntegerToFloat", "DynamicQuantizeLinear", "QAttention"}
INTEGER_OPS = {"MatMulIntegerToFloat", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "QAttention"}


class OrtSession(Session):
    """One InferenceSession; ``executed_precision`` is read on first access (see ``OrtBackend._session``)."""

    def __init__(self, session: Any, artifact: Path, settings: dict[str, Any], read_precision: Any) -> None:
        self.session = session
        self.artifact = artifact
        self.settings = settings
        self.output_names = [o.name for o in session.get_outputs()]
        self._extended_outputs = any(extended(o.type) for o in session.get_outputs())
        self._read_precision = read_precision
        self._executed: str | None = None
        self.runs = 0

    @property  # type: ignore[override]
    def executed_precision(self) -> str:
        if self._executed is None:
            self._executed = self._read_precision(self)
        return self._executed

    def run(self, feeds: Feeds) -> dict[str, Any]:
        """Run on host values: arrays, and for sequence/optional graph values lists of arrays / None.

        bfloat16/float8/int4/int2/float4 tensors (ml_dtypes arrays) go through OrtValues: ORT's numpy
        path rejects them ("Numpy_type N can't be converted to MLDataType" in, "No corresponding Numpy type" out).
        """
        extended_in = any(isinstance(v, np.ndarray) and v.dtype.isbuiltin != 1 for v in feeds.values())
        if self._extended_outputs or extended_in:
            outputs = run_ort_values(self.session, self.output_names, feeds)
        else:
            outputs = self.session.run(self.output_names, dict(feeds))
        self.runs += 1
        return dict(zip(self.output_names, outputs, strict=True))

    def bind(self, feeds: Feeds) -> BoundCall:
        """IO binding: inputs bound once (CPU arrays, or copied to the device once for CUDA/TensorRT EPs),
        outputs into OrtValues allocated once at their shapes from one ``run``; the call is
        ``run_with_iobinding`` alone (no feed dict, no output list, no allocation per call). Graphs with
        sequence/optional or ml_dtypes values keep the plain ``run``."""
        import onnxruntime as ort

        if self._extended_outputs or any(not isinstance(v, np.ndarray) or v.dtype.isbuiltin != 1
                                         for v in feeds.values()):
            return super().bind(feeds)
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

    def close(self) -> None:
        if self._executed is None and self.settings.get("profiling"):
            _end_profile(self.session)  # never read: do not leave the profile file behind


class OrtBackend(Backend):
    """ONNX Runtime with the best execution provider present."""

    name: ClassVar[str] = "ort"
    sdk_modules: ClassVar[tuple[str, ...]] = ("onnxruntime", "onnx")
    aliases: ClassVar[tuple[str, ...]] = ("onnxruntime",)

    def unavailable_reason(self) -> str | None:
        return missing_package_reason("ort", "onnxruntime", "onnx")

    def version(self) -> str:
        return _version()

    def warm_up(self) -> None:
        """One session of a one-node graph (ORT's environment, kernel registry, thread pool), run once."""
        import onnxruntime as ort
        from onnx import TensorProto, helper

        x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in "xy")
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "warm_up", [x], [y])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        session = ort.InferenceSession(model.SerializeToString(), self._options(), providers=self.providers())
        session.run(None, {"x": np.ones((1, 4), np.float32)})

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
        """Build one session: build errors are ``convert_failed``; nothing runs here (run errors surface in ``run``).

        The executed precision is read lazily, from the profile of the session's own runs (the first
        read ends the profile), or without a profile where the graph says it all: an fp32 request on
        a graph whose every float tensor is float32, with no subgraph, local function or non-ONNX op.
        ORT can only compute such a graph in float32 (its CPU EP never lowers a float kernel: the one
        transform that changes types, Cast insertion, raises fp16 to fp32 where no fp16 kernel exists;
        no EP option that lowers precision is set here), so its profile could only repeat the compute
        nodes' declared types. A graph with fp16/bf16/fp64 tensors is profiled: there ORT's casts,
        not the declared types, decide what computes (measured: fp16 Attention graphs run fp32 MatMuls).
        """
        import onnxruntime as ort

        providers = self.providers()
        from_graph = _graph_precision(path) if precision is Precision.FP32 else None
        so = self._options()
        if from_graph is None:
            so.enable_profiling = True
            so.profile_file_prefix = str(path.parent / f".ort-profile-{os.getpid()}")
        try:
            session = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as exc:
            if "Failed to construct locale" in str(exc):  # StringNormalizer's locale is the machine's to provide
                raise ConversionError(f"onnxruntime could not load {path.name}: this machine lacks the locale the "
                                      f"model names (install it, e.g. Debian's locales-all): {exc}",
                                      cause=Cause.ENVIRONMENT) from exc
            raise ConversionError(f"onnxruntime could not load {path.name}: {exc}") from exc
        settings = {"threads": self.threads, "inter_op_threads": 1, "providers": session.get_providers(),
                    "graph_optimization": "ORT_ENABLE_ALL", "profiling": from_graph is None, **recipe}
        if from_graph is not None:
            return OrtSession(session, path, settings, lambda s: from_graph)
        storage = "fp16" if precision is Precision.FP16 else None
        return OrtSession(session, path, settings, lambda s: _profiled_precision(s, model, storage))

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


@functools.cache
def _version() -> str:
    """The installed ORT's version, read once per process (package metadata costs ~1.5 ms a read, once per case)."""
    v = module_version("onnxruntime")
    return v if v != "not installed" else module_version("onnxruntime-gpu")


def _profiled_precision(s: OrtSession, model: ExportedModel, storage: str | None) -> str:
    """End the session's profile (after one run of the export example if nothing ran yet) and count the
    input types of the compute kernels that ran."""
    if s.runs == 0:
        try:
            s.run(model.example_feeds())
        except Exception:  # the run error itself surfaces from the case's own runs
            _end_profile(s.session)
            return "unknown"
    events = _end_profile(s.session)
    kernels: dict[str, str] = {}  # one entry per node, however many runs were profiled
    for ev in events:
        args = ev.get("args", {})
        op = args.get("op_name")
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time") or op not in COMPUTE_OPS:
            continue
        types = [next(iter(t)) for t in args.get("input_type_shape", []) if t]
        kind = "int8" if op in INTEGER_OPS else (types[0] if types else "unknown")
        kernels[f'{ev["name"]}#{args.get("node_index")}'] = kind
    counts = Counter(kernels.values())
    if storage is not None and counts and set(counts) <= {"float"}:
        return summarize(counts, storage=storage)
    return summarize(counts)


def _end_profile(session: Any) -> list[dict[str, Any]]:
    profile = Path(session.end_profiling())
    try:
        return json.loads(profile.read_text()) if profile.is_file() else []
    finally:
        profile.unlink(missing_ok=True)


FP32_ONLY = {1}  # TensorProto.FLOAT; integer/bool/string tensors do not decide a float precision
FLOAT_TYPES = {1, 10, 11, 16, 17, 18, 19, 20, 23}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16, FLOAT8*, FLOAT4


def _graph_precision(path: Path) -> str | None:
    """The compute nodes' first-input types when the graph is float32 only and flat (see ``_session``), else None."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    if model.functions or any(n.domain not in ("", "ai.onnx") or any(a.g.node or a.graphs for a in n.attribute)
                              for n in g.node):
        return None
    try:
        g = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # no inferred types: the profile decides
        return None
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    if any(t in FLOAT_TYPES and t not in FP32_ONLY for t in types.values()):
        return None
    counts: Counter[str] = Counter()
    for node in g.node:
        if node.op_type in COMPUTE_OPS and node.input and node.input[0] in types:
            elem = onnx.TensorProto.DataType.Name(types[node.input[0]]).lower()
            counts["int8" if node.op_type in INTEGER_OPS else elem] += 1
    return summarize(counts)


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


