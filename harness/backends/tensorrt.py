"""TensorRT 10: ONNX -> serialized engine (cached by hash), run on a CUDA device.

fp32 builds with TF32 off; fp16 sets ``BuilderFlag.FP16`` (TensorRT then picks
fp16 or fp32 per layer); int8 is explicit quantization by default: a symmetric
signed-INT8 QDQ ONNX from ONNX Runtime's static quantizer over the shared
calibration sets, built as a strongly typed network (TensorRT 10 deprecates
implicit INT8). ``HARNESS_TRT_INT8=calibrator`` selects implicit INT8 with an
``IInt8EntropyCalibrator2`` and a calibration cache file instead. Dynamic axes
become one optimization profile (min/opt/max from the model's declared sizes).
The executed precision is read back from the engine inspector's per-layer JSON.
Device buffers are torch CUDA tensors; ``TrtSession.sync()`` waits for the
session's stream, so timing covers the device work. GPU-free pieces live in
``harness.backends._trt_tools``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from harness.backends import _trt_tools as ts
from harness.backends.base import Backend, BoundCall, Session
from harness.core.cache import cached, feeds_digest, sha256_file
from harness.core.errors import ConversionError, UnsupportedPrecision
from harness.core.machine import module_version
from harness.core.precision import summarize
from harness.core.types import Feeds, Precision

if TYPE_CHECKING:
    from harness.model.export import ExportedModel

WORKSPACE_BYTES = 1 << 30
INT8_MODES = ("qdq", "calibrator")


class TrtSession(Session):
    """One deserialized engine with an execution context, a CUDA stream and reusable device buffers."""

    def __init__(self, runtime: Any, engine: Any, device_index: int, artifact: Path, settings: dict[str, Any],
                 executed: str, output_names: Sequence[str]) -> None:
        import tensorrt as trt
        import torch

        self._torch = torch
        self.runtime = runtime  # the runtime must outlive the engines it deserialized
        self.engine = engine
        self.device_index = device_index
        self.artifact = artifact
        self.settings = settings
        self.executed_precision = executed
        self.context = engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=device_index)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        engine_outputs = [n for n in names if n not in self.input_names]
        self.output_names = [n for n in output_names if n in engine_outputs] or engine_outputs
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self._buffers: dict[str, Any] = {}

    def _buffer(self, name: str, shape: tuple[int, ...]) -> Any:
        torch = self._torch
        buf = self._buffers.get(name)
        if buf is None or tuple(buf.shape) != shape:
            dtype = torch.from_numpy(np.empty(0, self.dtypes[name])).dtype
            buf = self._buffers[name] = torch.empty(shape, dtype=dtype, device=f"cuda:{self.device_index}")
        return buf

    def _bind(self, feeds: Feeds) -> dict[str, Any]:
        torch = self._torch
        for name in self.input_names:
            if name not in feeds:
                raise KeyError(f"trt: input {name!r} missing from feeds (got {sorted(feeds)})")
            host = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
            buf = self._buffer(name, host.shape)
            buf.copy_(torch.from_numpy(host))
            if not self.context.set_input_shape(name, host.shape):
                raise ValueError(f"trt: input {name!r} shape {host.shape} is outside the engine's optimization "
                                 f"profile {self.settings.get('profiles', {}).get(name)}")
            self.context.set_tensor_address(name, buf.data_ptr())
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"trt: output {name!r} has a data-dependent shape {shape}; not supported here")
            outputs[name] = self._buffer(name, shape)
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        return outputs

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.cuda.device(self.device_index), torch.cuda.stream(self.stream):
            outputs = self._bind(feeds)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("trt: execute_async_v3 returned False (see TensorRT's log above)")
            self.stream.synchronize()
            return {name: buf.cpu().numpy().copy() for name, buf in outputs.items()}

    def bind(self, feeds: Feeds) -> BoundCall:
        """Inputs copied once into the device buffers whose addresses are set on the execution context; the
        call is ``execute_async_v3`` on the session's stream between two CUDA events, then the end event's
        ``synchronize`` (the sample covers the device work). ``engine_ms`` is the events' elapsed time."""
        torch = self._torch
        with torch.cuda.device(self.device_index), torch.cuda.stream(self.stream):
            outputs = self._bind(feeds)
            self.stream.synchronize()  # the input copies are done before the first timed call
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        context, stream = self.context, self.stream
        handle = stream.cuda_stream

        def call() -> None:
            start.record(stream)
            if not context.execute_async_v3(handle):
                raise RuntimeError("trt: execute_async_v3 returned False (see TensorRT's log above)")
            end.record(stream)
            end.synchronize()

        return BoundCall(call, engine_ms=lambda: float(start.elapsed_time(end)), keep=(outputs,))

    def sync(self) -> None:
        """Wait until all work queued on this session's stream has finished."""
        self.stream.synchronize()

    def close(self) -> None:
        self._buffers.clear()
        self.context = None
        self.engine = None
        self.runtime = None


class TrtBackend(Backend):
    """NVIDIA TensorRT on a CUDA GPU (``device='cuda:N'`` picks the GPU; default cuda:0)."""

    name: ClassVar[str] = "trt"
    sdk_modules: ClassVar[tuple[str, ...]] = ("tensorrt",)
    aliases: ClassVar[tuple[str, ...]] = ("tensorrt",)

    def __init__(self, threads: int | None = None, device: str = "cpu", int8_mode: str | None = None) -> None:
        super().__init__(threads, device)
        self.int8_mode = (int8_mode or os.environ.get("HARNESS_TRT_INT8", "qdq")).lower()
        if self.int8_mode not in INT8_MODES:
            raise ValueError(f"unknown TensorRT int8 mode {self.int8_mode!r}; known: {', '.join(INT8_MODES)}")

    def unavailable_reason(self) -> str | None:
        return ts.unavailable_reason(ts.probe_environment())

    def version(self) -> str:
        for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11"):
            if (v := module_version(dist)) != "not installed":
                return v
        return "not installed"

    @property
    def device_index(self) -> int:
        return int(self.device.split(":", 1)[1]) if self.device.startswith("cuda:") else 0

    def load(self, model: ExportedModel, precision: Precision, workdir: Path,
             calibration: Sequence[Feeds] | None = None) -> Session:
        import tensorrt as trt
        import torch

        idx = self.device_index
        torch.cuda.set_device(idx)
        gpu, capability = torch.cuda.get_device_name(idx), ".".join(map(str, torch.cuda.get_device_capability(idx)))
        shapes = ts.profile_shapes(model.spec)
        onnx_path, recipe = self._source(trt, model, precision, calibration)
        calib = feeds_digest(calibration) if precision is Precision.INT8 and calibration else None
        onnx_sha = sha256_file(onnx_path)
        key = ts.engine_cache_key(onnx_sha, precision.value, trt.__version__, gpu, calibration=calib,
                                  capability=capability, int8_mode=recipe.get("int8_mode"), profiles=shapes,
                                  workspace=WORKSPACE_BYTES, tf32=False)
        cache_file = model.artifact(f"trt-calib-{onnx_sha[:12]}-{calib}-{trt.__version__}.cache")
        engine_path = cached(model.artifact(f"trt-{precision.value}-{key}.engine"),
                             lambda tmp: self._build(trt, onnx_path, precision, recipe, shapes, calibration,
                                                     cache_file, tmp))
        logger = _logger(trt)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise ConversionError(f"trt: could not deserialize {engine_path} ({logger.take()}); delete it to rebuild")
        executed, layers = _executed_precision(trt, engine, {n: opt for n, (_, opt, _) in shapes.items()})
        layers_path = engine_path.with_suffix(".layers.json")
        layers_path.write_text(layers)
        settings = {"device": f"cuda:{idx}", "gpu": gpu, "compute_capability": capability,
                    "tensorrt": trt.__version__, "workspace_mb": WORKSPACE_BYTES >> 20, "tf32": False,
                    "profiles": {n: [list(s) for s in v] for n, v in shapes.items()},
                    "engine_cache_key": key, "layer_info": str(layers_path), **recipe}
        return TrtSession(runtime, engine, idx, engine_path, settings, executed, model.output_names)

    def _source(self, trt: Any, model: ExportedModel, precision: Precision,
                calibration: Sequence[Feeds] | None) -> tuple[Path, dict[str, Any]]:
        """The ONNX to parse and the recipe that goes with it."""
        if precision is Precision.FP32:
            return model.onnx_path, {"network": "weakly_typed", "builder_flags": []}
        if precision is Precision.FP16:
            if not hasattr(trt.BuilderFlag, "FP16"):
                raise UnsupportedPrecision(f"trt fp16: TensorRT {trt.__version__} has no BuilderFlag.FP16 (strong "
                                           "typing only, TensorRT >= 11); this backend targets TensorRT 10.x: "
                                           "pip install 'tensorrt>=10,<11'")
            return model.onnx_path, {"network": "weakly_typed", "builder_flags": ["FP16"]}
        if not calibration:
            raise ConversionError("trt int8: needs calibration data and none was given")
        if self.int8_mode == "calibrator":
            if not hasattr(trt, "IInt8EntropyCalibrator2"):
                raise UnsupportedPrecision(f"trt int8: TensorRT {trt.__version__} removed implicit INT8 "
                                           "calibrators; use HARNESS_TRT_INT8=qdq (explicit quantization)")
            return model.onnx_path, {"network": "weakly_typed", "builder_flags": ["INT8"],
                                     "int8_mode": "implicit-calibrator",
                                     "recipe": "IInt8EntropyCalibrator2 over the shared calibration sets, batch 1",
                                     "calibration_samples": len(calibration)}
        digest = feeds_digest(calibration)
        try:
            path = cached(model.artifact(f"trt-int8-qdq-{digest}.onnx"),
                          lambda tmp: ts.quantize_qdq(model.onnx_path, tmp, calibration))
        except Exception as exc:
            raise ConversionError(f"trt int8: QDQ quantization with onnxruntime failed: "
                                  f"{type(exc).__name__}: {exc}") from exc
        strongly = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
        return path, {"network": "strongly_typed" if strongly else "weakly_typed",
                      "builder_flags": [] if strongly else ["INT8"], "int8_mode": "explicit-qdq",
                      "recipe": "onnxruntime quantize_static QDQ, symmetric QInt8 activations and per-channel "
                                f"weights, MinMax calibration, ops {'/'.join(ts.QDQ_OPS)}",
                      "calibration_samples": len(calibration)}

    def _build(self, trt: Any, onnx_path: Path, precision: Precision, recipe: dict[str, Any],
               shapes: dict[str, Any], calibration: Sequence[Feeds] | None, cache_file: Path, out: Path) -> None:
        logger = _logger(trt)
        logger.take()
        builder = trt.Builder(logger)
        flags = 0  # explicit batch is the only mode in TensorRT 10 (EXPLICIT_BATCH is deprecated and ignored)
        if recipe["network"] == "strongly_typed":
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ConversionError(f"trt: the ONNX parser rejected {onnx_path.name}: {errors or logger.take()}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        if hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)
        for flag in recipe["builder_flags"]:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        inputs = [network.get_input(i) for i in range(network.num_inputs)]
        dynamic = [t.name for t in inputs if any(d < 0 for d in t.shape)]
        if undeclared := [n for n in dynamic if n not in shapes]:
            raise ConversionError(f"trt: ONNX inputs {undeclared} have dynamic dimensions the model does not declare")
        if dynamic:
            profile = builder.create_optimization_profile()
            for name in dynamic:
                profile.set_shape(name, *shapes[name])
            config.add_optimization_profile(profile)
        if recipe.get("int8_mode") == "implicit-calibrator":
            dtypes = {t.name: np.dtype(trt.nptype(t.dtype)) for t in inputs}
            batches = list(ts.calibration_batches(calibration or [], [t.name for t in inputs], 1, dtypes))
            config.int8_calibrator = _calibrator(trt, batches, ts.CalibrationCache(cache_file), self.device_index)
            if dynamic:
                calib_profile = builder.create_optimization_profile()
                for name in dynamic:
                    shape = batches[0][name].shape
                    calib_profile.set_shape(name, shape, shape, shape)
                config.set_calibration_profile(calib_profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ConversionError(f"trt: build_serialized_network failed at {precision.value}: {logger.take()}")
        out.write_bytes(bytes(serialized))


def _executed_precision(trt: Any, engine: Any, shapes: dict[str, tuple[int, ...]]) -> tuple[str, str]:
    """Per-layer types from the engine inspector, with a context bound to concrete shapes (else formats are -1)."""
    context = engine.create_execution_context()
    for name, shape in shapes.items():
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            context.set_input_shape(name, shape)
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    return summarize(ts.inspector_dtype_counts(info)), info


@cache
def _logger(trt: Any) -> Any:
    """TensorRT keeps the first logger process-wide: one instance that collects errors for messages."""

    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)

        def take(self) -> str:
            text, self.errors = "; ".join(self.errors[-5:]) or "no error logged", []
            return text

    return CollectingLogger()


def _calibrator(trt: Any, batches: list[dict[str, np.ndarray]], cache_file: ts.CalibrationCache,
                device_index: int) -> Any:
    """An IInt8EntropyCalibrator2 feeding ``batches`` from torch device tensors, with a cache file."""
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = iter(batches)
            self._held: dict[str, Any] = {}  # device tensors must outlive the get_batch call

        def get_batch_size(self) -> int:
            return 1  # explicit-batch networks: the batch is part of the calibration profile's shape

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._batches, None)
            if batch is None:
                return None
            self._held = {n: torch.from_numpy(batch[n]).to(f"cuda:{device_index}") for n in names}
            return [int(self._held[n].data_ptr()) for n in names]

        def read_calibration_cache(self) -> bytes | None:
            return cache_file.read()

        def write_calibration_cache(self, data: Any) -> None:
            cache_file.write(bytes(data))

    return EntropyCalibrator()
