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
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from harness.backends import _ov_nncf as ovq
from harness.backends._ov_audit import audit, has_attention
from harness.backends._ov_session import (
    NotFeedable,
    OpenVinoSession,
    _non_tensor,
    input_ports,
    non_tensor_values,
)
from harness.backends.base import Backend, Session
from harness.core.cache import cached, feeds_digest
from harness.core.errors import ConversionError, UnsupportedPrecision
from harness.core.machine import module_version
from harness.core.types import Feeds, Precision

if TYPE_CHECKING:
    from harness.model.export import ExportedModel

SOURCES = ("onnx", "torch")
SOURCE_ENV = "HARNESS_OV_SOURCE"
DEVICES = ("CPU", "GPU", "NPU")
_HINTS = {Precision.FP32: "f32", Precision.FP16: "f16", Precision.INT8: "f32"}
TELEMETRY_MODULE = "openvino_telemetry"


def telemetry_off() -> bool:
    """Keep OpenVINO's and NNCF's usage telemetry out of this process; True if it is off.

    ``openvino.convert_model`` (ovc) and NNCF report usage through ``openvino_telemetry``, on by default
    (OpenVINO's telemetry page: opt out with ``opt_in_out --opt_out``). Its GA4 backend sends every event
    from a *forked* ``multiprocessing.Process``: forked from a process running torch/engine threads, it
    can inherit a held lock and hang (seen here: one stuck in a futex for minutes), it outlives the case,
    and it runs in the middle of measured cases; it also writes ``~/intel/openvino_ga_cid`` and ``stats``.
    The documented opt-outs do not fit a harness: the consent file ``~/intel/openvino_telemetry`` (what
    ``opt_in_out --opt_out`` writes) changes the user's choice for every OpenVINO tool on the machine and
    sends an opt-out event, and ``disable_in_ci`` means setting ``CI=true`` for everything in the process.
    Both ovc (``openvino.tools.ovc.telemetry_stub``) and NNCF (``NNCFTelemetryStub``) fall back to a no-op
    stub when the package cannot be imported, so the harness makes it unimportable here: nothing is sent,
    forked or written. Effective when it runs before anything imported openvino, which is the case in the
    harness's processes (the backend registry imports this module before any backend runs).
    """
    if sys.modules.get(TELEMETRY_MODULE, None) is not None:
        return False  # imported before the harness (by the user's own code in this process): left as it is
    sys.modules[TELEMETRY_MODULE] = None  # type: ignore[assignment]  # import -> ImportError -> the stubs
    return True


telemetry_off()


class OpenVinoBackend(Backend):
    """OpenVINO runtime, CPU by default; GPU/NPU when OpenVINO sees one."""

    name: ClassVar[str] = "ov"
    sdk_modules: ClassVar[tuple[str, ...]] = ("openvino",)
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

    def warm_up(self) -> None:
        """Compile and run a one-node model on the device (loads the device plugin, its thread pool and
        kernels: 31 of the 39 MB a first OpenVINO case in a child otherwise carries)."""
        import openvino as ov
        import openvino.opset13 as ops

        x = ops.parameter([1, 4], np.float32)
        compiled = ov.Core().compile_model(ov.Model([ops.relu(x)], [x]), self.ov_device, self._config(Precision.FP32))
        compiled.create_infer_request().infer({0: np.ones((1, 4), np.float32)})

    def unsupported_reason(self, model: ExportedModel, precision: Precision) -> str | None:
        if precision is Precision.INT8 and (why := ovq.nncf_missing()) is not None:
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
        session = self._compile(ir, precision, model, log)
        kinds = _non_tensor(model.spec)
        if any(k in ("a sequence", "an empty optional") for k in kinds.values()):
            session.close()  # OpenVINO's runtime API has tensors only: no sequence or optional values at all
            raise UnsupportedPrecision(f"ov: {non_tensor_values(model.spec)}; OpenVINO's runtime (InferRequest) "
                                       "carries tensors only, so the converted model cannot take or give these values")
        if kinds:  # the engine built it and has the type: only our feeding cannot
            session.close()
            raise NotFeedable(f"ov: {non_tensor_values(model.spec)}; the harness feeds OpenVINO numpy arrays of "
                              "numpy's own dtypes only, so it cannot feed or read these values (the engine built "
                              "the model)")
        return session

    def _fp32_ir(self, model: ExportedModel, log: dict[str, Any]) -> Path:
        convert = _from_torch if self.source == "torch" else _from_onnx
        return _build(model.artifact(f"ov-{self.source}-fp32-{_tag()}.xml"),
                      lambda tmp: _save(convert(model, log), tmp, compress_to_fp16=False), log, "convert")

    def _int8_ir(self, model: ExportedModel, fp32_ir: Path, calibration: Sequence[Feeds] | None,
                 log: dict[str, Any]) -> Path:
        if (why := ovq.nncf_missing()) is not None:
            raise UnsupportedPrecision(why)
        if not calibration:
            raise ConversionError("ov int8: NNCF post-training quantization needs calibration feeds and none were "
                                  "given (the runner passes harness.model.inputs.calibration_set)")
        import nncf

        ov_model = _read(fp32_ir)
        transformer = "transformer" in model.spec.tags or has_attention(ov_model)
        shape_nodes = ovq.shape_nodes(model, ov_model) if self.source == "onnx" else []
        kwargs, recipe = ovq.nncf_recipe(transformer, model.spec.int8_hints.get("ov_ignored_patterns", ()), shape_nodes)
        log["recipe"] = (f"nncf.quantize post-training on the fp32 IR ({self.source}), {recipe}, "
                         f"subset_size={len(calibration)}, fast_bias_correction=True")
        log.update(nncf_version=module_version("nncf"), calibration_samples=len(calibration),
                   model_type="transformer" if transformer else "default")
        key = feeds_digest(calibration, salt=f"{module_version('nncf')}|{recipe}", length=12)

        def quantize(tmp: Path) -> None:
            try:
                quantized = nncf.quantize(ov_model, nncf.Dataset(list(calibration)), subset_size=len(calibration),
                                          **kwargs)
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
        return OpenVinoSession(compiled, ir, settings, found.executed, model.output_names, model.input_names)


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

    wanted: dict[int, Any] = {}
    ports = list(ov_model.inputs)
    not_tensors = _non_tensor(model.spec)  # a sequence has no tensor shape to give (load refuses to feed it)
    for name, i in input_ports(ports, model.input_names).items():  # pruned inputs have no port to shape
        spec = next(t for t in model.spec.inputs if t.name == name)
        shape = ov.PartialShape([-1 if isinstance(d, str) else d for d in spec.shape])
        have = ports[i].get_partial_shape()
        if name not in not_tensors and (not shape.compatible(have) or have.is_static != shape.is_static):
            wanted[i] = shape
    if wanted:
        try:
            ov_model.reshape(wanted)
        except Exception as exc:
            raise ConversionError(f"ov: cannot give the IR the declared input shapes {wanted}: {exc}") from exc
    return ov_model


