"""OpenVINO: IR converted with ``openvino.convert_model``, compiled for CPU (or a present GPU/NPU).

The IR is converted from the ONNX export by default, or straight from the torch
module (``HARNESS_OV_SOURCE=torch`` or ``OpenVinoBackend(source="torch")``;
under ``no_grad``, with PyTorch's fused MHA fast path off). fp32 compiles with
INFERENCE_PRECISION_HINT=f32 so AMX/bf16 CPUs do not silently downcast; fp16 is
the IR saved with ``compress_to_fp16=True`` compiled with the f16 hint; int8 is
NNCF post-training quantization of the fp32 IR over the shared calibration
feeds (``ModelType.TRANSFORMER`` for transformers). Every IR is cached
(``.xml`` + ``.bin``) in the model's cache directory; the int8 IR is keyed by a
hash of the calibration data. The executed precision is read back from the
compiled model's runtime graph (see ``_ov_audit``).
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from harness.backends._ov_audit import audit, has_attention
from harness.backends.base import Backend, BoundCall, Session
from harness.core.cache import cached, feeds_digest
from harness.core.errors import ConversionError, UnsupportedPrecision
from harness.core.machine import module_version
from harness.core.types import Feeds, Precision

if TYPE_CHECKING:
    from harness.model.export import ExportedModel

SOURCES = ("onnx", "torch")
SOURCE_ENV = "HARNESS_OV_SOURCE"
DEVICES = ("CPU", "GPU", "NPU")
NNCF_HINT = "pip install nncf (or pip install -e '.[openvino]')"
_HINTS = {Precision.FP32: "f32", Precision.FP16: "f16", Precision.INT8: "f32"}


class OpenVinoSession(Session):
    """One compiled model and its synchronous infer request; host numpy in and out."""

    def __init__(self, compiled: Any, artifact: Path, settings: dict[str, Any], executed: str,
                 output_names: Sequence[str]) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.artifact = artifact
        self.settings = settings
        self.executed_precision = executed
        self.ports = _output_ports(compiled, output_names)

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        self.request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return {name: np.array(self.request.get_tensor(port).data, copy=True) for name, port in self.ports.items()}

    def bind(self, feeds: Feeds) -> BoundCall:
        """Input tensors set on the infer request once (copied once); the call is the
        binding's synchronous ``infer`` with no inputs to dispatch and outputs left in the request
        (``openvino._pyopenvino.InferRequest.infer(request, {}, share_outputs=True)``: what ``benchmark_app``'s
        ``request.infer()`` runs, minus the Python wrapper's output copies). ``engine_ms`` is the
        runtime's own ``request.latency`` of the call, the figure ``benchmark_app`` reports."""
        import openvino as ov

        request = self.request
        for port in self.compiled.inputs:
            name = next((n for n in port.get_names() if n in feeds), None)
            if name is None:
                raise KeyError(f"ov: no feed for input {sorted(port.get_names())} (feeds: {sorted(feeds)})")
            # a tensor owning a copy in the port's type: a later run() copies its feeds into it, so it must
            # not share memory with the caller's array (or with one freed after this call is dropped)
            array = np.ascontiguousarray(feeds[name], dtype=port.get_element_type().to_dtype())
            request.set_tensor(port, ov.Tensor(array, shared_memory=False))
        native = getattr(getattr(ov, "_pyopenvino", None), "InferRequest", None)
        if native is not None and isinstance(request, native):
            infer = native.infer
            call = lambda: infer(request, {}, True, False)  # noqa: E731 - the timed call, nothing else
        else:  # another binding layout: the public call (copies outputs)
            call = request.infer
        return BoundCall(call, engine_ms=lambda: request.latency)

    def close(self) -> None:
        self.request = None
        self.compiled = None


def _output_ports(compiled: Any, names: Sequence[str]) -> dict[str, Any]:
    """Model output name -> compiled output port: by tensor name, else by position."""
    outputs = list(compiled.outputs)
    if len(outputs) != len(names):
        have = [sorted(o.get_names()) for o in outputs]
        raise ConversionError(f"ov: the compiled model has {len(outputs)} outputs {have}, the model declares "
                              f"{len(names)} ({', '.join(names)}); check the conversion source")
    by_name = {n: o for o in outputs for n in o.get_names()}
    return {n: by_name.get(n, outputs[i]) for i, n in enumerate(names)}


class OpenVinoBackend(Backend):
    """OpenVINO runtime, CPU by default; GPU/NPU when OpenVINO sees one."""

    name: ClassVar[str] = "ov"
    aliases: ClassVar[tuple[str, ...]] = ("openvino",)

    def __init__(self, threads: int | None = None, device: str = "cpu", source: str | None = None) -> None:
        super().__init__(threads=threads, device=device)
        chosen = (source or os.environ.get(SOURCE_ENV) or "onnx").lower()
        if chosen not in SOURCES:
            raise ValueError(f"ov: unknown conversion source {chosen!r} (from {'source=' if source else SOURCE_ENV}); "
                             f"choose one of {', '.join(SOURCES)}")
        self.source = chosen
        self.needs_onnx = chosen == "onnx"  # instance override: the torch path never reads the ONNX export

    @property
    def ov_device(self) -> str:
        """The OpenVINO device name (``cpu`` -> ``CPU``, ``gpu.0`` -> ``GPU.0``)."""
        return self.device.upper()

    def unavailable_reason(self) -> str | None:
        import importlib.util

        if importlib.util.find_spec("openvino") is None:
            return "ov: Python package 'openvino' not installed (pip install -e '.[openvino]')"
        device = self.ov_device
        if device.split(".")[0] not in DEVICES:
            return f"ov: device {self.device!r} is not an OpenVINO device; use one of {', '.join(DEVICES)}"
        if device == "CPU":
            return None
        import openvino as ov

        present = ov.Core().available_devices
        if device not in present and not any(d.startswith(device + ".") for d in present):
            return f"ov: device {device} requested but OpenVINO sees only {', '.join(present) or 'no device'}"
        return None

    def version(self) -> str:
        return module_version("openvino")

    def unsupported_reason(self, model: ExportedModel, precision: Precision) -> str | None:
        if precision is Precision.INT8 and (why := _nncf_missing()) is not None:
            return why
        return super().unsupported_reason(model, precision)

    def load(self, model: ExportedModel, precision: Precision, workdir: Path,
             calibration: Sequence[Feeds] | None = None) -> Session:
        log: dict[str, Any] = {"source": self.source, "ir_built": []}
        fp32_ir = self._fp32_ir(model, log)
        if precision is Precision.FP32:
            ir = fp32_ir
            log["recipe"] = f"convert_model from {self.source}, fp32 IR, INFERENCE_PRECISION_HINT=f32"
        elif precision is Precision.FP16:
            ir = _build(model.artifact(f"ov-{self.source}-fp16-{_tag()}.xml"),
                        lambda tmp: _save(_read(fp32_ir), tmp, compress_to_fp16=True), log, "compress")
            log["recipe"] = f"convert_model from {self.source}, IR compress_to_fp16=True, INFERENCE_PRECISION_HINT=f16"
        else:
            ir = self._int8_ir(model, fp32_ir, calibration, log)
        return self._compile(ir, precision, model, log)

    def _fp32_ir(self, model: ExportedModel, log: dict[str, Any]) -> Path:
        convert = _from_torch if self.source == "torch" else _from_onnx
        return _build(model.artifact(f"ov-{self.source}-fp32-{_tag()}.xml"),
                      lambda tmp: _save(convert(model, log), tmp, compress_to_fp16=False), log, "convert")

    def _int8_ir(self, model: ExportedModel, fp32_ir: Path, calibration: Sequence[Feeds] | None,
                 log: dict[str, Any]) -> Path:
        if (why := _nncf_missing()) is not None:
            raise UnsupportedPrecision(why)
        if not calibration:
            raise ConversionError("ov int8: NNCF post-training quantization needs calibration feeds and none were "
                                  "given (the runner passes harness.model.inputs.calibration_set)")
        import nncf

        ov_model = _read(fp32_ir)
        transformer = "transformer" in model.spec.tags or has_attention(ov_model)
        log["recipe"] = (f"nncf.quantize post-training on the fp32 IR ({self.source}), default preset, "
                         f"model_type={'TRANSFORMER' if transformer else 'default'}, "
                         f"subset_size={len(calibration)}, fast_bias_correction=True")
        log.update(nncf_version=module_version("nncf"), calibration_samples=len(calibration),
                   model_type="transformer" if transformer else "default")
        key = feeds_digest(calibration, salt=f"{module_version('nncf')}|{transformer}", length=12)

        def quantize(tmp: Path) -> None:
            try:
                quantized = nncf.quantize(ov_model, nncf.Dataset(list(calibration)), subset_size=len(calibration),
                                          model_type=nncf.ModelType.TRANSFORMER if transformer else None)
            except Exception as exc:
                raise ConversionError(f"ov int8: nncf.quantize failed on {fp32_ir.name}: "
                                      f"{type(exc).__name__}: {exc}") from exc
            _save(quantized, tmp, compress_to_fp16=False)

        return _build(model.artifact(f"ov-{self.source}-int8-{_tag()}-{key}.xml"), quantize, log, "quantize")

    def _config(self, precision: Precision) -> dict[str, Any]:
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                                  "INFERENCE_PRECISION_HINT": _HINTS[precision]}
        if self.ov_device == "CPU":
            config["INFERENCE_NUM_THREADS"] = self.threads
        return config

    def _compile(self, ir: Path, precision: Precision, model: ExportedModel, log: dict[str, Any]) -> Session:
        import openvino as ov

        config = self._config(precision)
        start = time.perf_counter()
        try:
            compiled = ov.Core().compile_model(str(ir), self.ov_device, config)
        except Exception as exc:
            raise ConversionError(f"ov: compile_model({ir.name}, {self.ov_device}, {config}) failed: "
                                  f"{type(exc).__name__}: {exc}") from exc
        log["compile_s"] = round(time.perf_counter() - start, 3)
        found = audit(compiled)
        settings = {
            "device": self.ov_device,
            "threads": self.threads,
            "requested": {k.lower(): v for k, v in config.items()},
            **_readback(compiled),
            "inference_precision_readback": found.hint,
            "runtime_precisions": found.runtime_precisions,
            "kernel_precisions": found.kernel_precisions,
            "fp16_weights_fp32_kernels": found.fp16_weights_fp32_kernels,
            "openvino_version": self.version(),
            **log,
        }
        return OpenVinoSession(compiled, ir, settings, found.executed, model.output_names)


def _readback(compiled: Any) -> dict[str, Any]:
    """The engine's own view of the settings it runs with."""
    out: dict[str, Any] = {}
    for key in ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT", "EXECUTION_DEVICES"):
        try:
            value = compiled.get_property(key)
        except Exception:  # a device may not expose every property
            continue
        out[key.lower()] = value if isinstance(value, int | list) else str(value).split(".")[-1]
    return out


def _tag() -> str:
    """Part of every IR file name: IR produced by another OpenVINO release is not reused."""
    return hashlib.sha256(module_version("openvino").encode()).hexdigest()[:8]


def _build(path: Path, build: Callable[[Path], None], log: dict[str, Any], step: str) -> Path:
    """``cached`` IR (``.xml`` + ``.bin``); records whether it was built now and how long it took."""

    def timed_build(tmp: Path) -> None:
        start = time.perf_counter()
        build(tmp)
        log[f"{step}_s"] = round(time.perf_counter() - start, 3)

    out = cached(path, timed_build, extra_files=(".bin",))
    if f"{step}_s" in log:
        log["ir_built"].append(step)
    return out


def _save(ov_model: Any, path: Path, *, compress_to_fp16: bool) -> None:
    import openvino as ov

    ov.save_model(ov_model, str(path), compress_to_fp16=compress_to_fp16)


def _read(path: Path) -> Any:
    import openvino as ov

    return ov.Core().read_model(str(path))


def _from_onnx(model: ExportedModel, log: dict[str, Any]) -> Any:
    import openvino as ov

    path = model.onnx_path
    try:
        ov_model = ov.convert_model(str(path))
    except Exception as exc:
        raise ConversionError(f"ov: openvino.convert_model rejected {path.name}: {type(exc).__name__}: {exc}. "
                              f"Converting from torch may work: {SOURCE_ENV}=torch") from exc
    return _fix_io(ov_model, model)


def _from_torch(model: ExportedModel, log: dict[str, Any]) -> Any:
    """Trace the module with OpenVINO's torch frontend; tracer warnings go to the settings, not the console."""
    import warnings

    import openvino as ov
    import torch

    from harness.model.reference import mha_fastpath_disabled

    feeds = model.example_feeds()
    example = tuple(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in model.input_names)
    shapes = [ov.PartialShape([-1 if isinstance(d, str) else d for d in t.shape]) for t in model.spec.inputs]
    module = copy.deepcopy(model.module())  # the frontend traces it; the reference keeps an untouched copy
    try:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad(), mha_fastpath_disabled():
            warnings.simplefilter("always")
            ov_model = ov.convert_model(module, example_input=example, input=shapes)
    except Exception as exc:
        raise ConversionError(f"ov: openvino.convert_model could not convert the torch module "
                              f"{model.spec.name}: {type(exc).__name__}: {exc}. "
                              f"The ONNX path may work: {SOURCE_ENV}=onnx") from exc
    if caught:
        log["convert_warnings"] = sorted({f"{w.category.__name__}: {w.message}"[:300] for w in caught})[:10]
    for port, name in zip(ov_model.inputs, model.input_names, strict=True):
        port.get_tensor().set_names({name})
    if len(ov_model.outputs) == len(model.output_names):
        for port, name in zip(ov_model.outputs, model.output_names, strict=True):
            port.get_tensor().set_names({name})
    return _fix_io(ov_model, model)


def _fix_io(ov_model: Any, model: ExportedModel) -> Any:
    """Make every symbolic axis of the model's TensorSpecs dynamic in the IR (static ones stay static)."""
    import openvino as ov

    wanted: dict[str, Any] = {}
    for spec in model.spec.inputs:
        port = next((p for p in ov_model.inputs if spec.name in p.get_names()), None)
        if port is None:
            have = [sorted(p.get_names()) for p in ov_model.inputs]
            raise ConversionError(f"ov: converted model has no input {spec.name!r} (inputs: {have})")
        shape = ov.PartialShape([-1 if isinstance(d, str) else d for d in spec.shape])
        if not shape.compatible(port.get_partial_shape()) or port.get_partial_shape().is_static != shape.is_static:
            wanted[spec.name] = shape
    if wanted:
        try:
            ov_model.reshape(wanted)
        except Exception as exc:
            raise ConversionError(f"ov: cannot give the IR the declared input shapes {wanted}: {exc}") from exc
    return ov_model


def _nncf_missing() -> str | None:
    import importlib.util

    if importlib.util.find_spec("nncf") is None:
        return f"ov int8: NNCF (post-training quantization for OpenVINO) is not installed: {NNCF_HINT}"
    return None
