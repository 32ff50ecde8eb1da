"""OpenVINO backend on the real engine: verdicts per precision, the precision audit, IR caching, sources."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from harness import backends
from harness.backends._ov_audit import has_attention
from harness.backends.openvino import OpenVinoBackend
from harness.core.errors import BackendUnavailable, ConversionError, UnsupportedPrecision
from harness.core.machine import cpu_flags
from harness.core.options import CaseRequest
from harness.core.precision import compute_types, normalize, precision_match
from harness.core.types import Precision, Status
from harness.model.export import ExportedModel
from harness.model.inputs import calibration_set, make_feeds
from harness.model.reference import run_torch
from harness.run.case import run_case
from model_zoo import get_model

pytestmark = pytest.mark.skipif(OpenVinoBackend().unavailable_reason() is not None,
                                reason=str(OpenVinoBackend().unavailable_reason()))

CI_MODELS = ["resnet_tiny", "transformer_tiny", "lstm_tiny", "srcnn_tiny"]
FP16_CAPABLE = ("avx512_fp16", "amx_fp16", "amx_bf16", "amx_tile")
"""CPU flags with which OpenVINO's CPU plugin may really compute in fp16 (or run the f16 hint in bf16)."""


@pytest.fixture(scope="module", autouse=True)
def _module_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One temporary artifact cache for the module: ONNX exports are shared between its tests."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(tmp_path_factory.mktemp("harness-cache")))
        mp.delenv("HARNESS_OV_SOURCE", raising=False)
        yield


def _model(name: str) -> ExportedModel:
    return ExportedModel(get_model(name))


def _kernel_types(session: object, layer_types: set[str]) -> set[str]:
    """Straight from the engine: type suffixes of the kernels of the given runtime layer types."""
    found = set()
    for op in session.compiled.get_runtime_model().get_ordered_ops():  # type: ignore[attr-defined]
        info = op.get_rt_info()
        if info["layerType"].astype(str) in layer_types:
            found.add(normalize(info["primitiveType"].astype(str).rsplit("_", 1)[-1]))
    return found


# --- registration and availability ----------------------------------------------------------------------------


def test_registered_with_alias_and_version() -> None:
    import openvino

    assert backends.get("openvino") is OpenVinoBackend
    assert backends.canonical("OpenVINO") == "ov"
    version = OpenVinoBackend().version()
    assert version != "not installed"
    assert openvino.__version__.startswith(version)


def test_missing_openvino_gives_exact_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # find_spec() then reports it absent
    assert OpenVinoBackend().unavailable_reason() == (
        "ov: Python package 'openvino' not installed (pip install -e '.[openvino]')")


@pytest.mark.parametrize("device", ["gpu", "NPU"])
def test_absent_device_is_unavailable_with_what_exists(device: str) -> None:
    import openvino as ov

    present = ov.Core().available_devices
    if any(d.startswith(device.upper()) for d in present):
        pytest.skip(f"this machine has an OpenVINO {device.upper()} device ({present})")
    reason = OpenVinoBackend(device=device).unavailable_reason()
    assert reason == f"ov: device {device.upper()} requested but OpenVINO sees only {', '.join(present)}"
    with pytest.raises(BackendUnavailable, match=f"device {device.upper()} requested"):
        backends.create("ov", device=device)


def test_unknown_device_and_source_are_refused() -> None:
    assert "use one of CPU, GPU, NPU" in str(OpenVinoBackend(device="tpu").unavailable_reason())
    with pytest.raises(ValueError, match=r"unknown conversion source 'tflite'.*onnx, torch"):
        OpenVinoBackend(source="tflite")


def test_source_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_OV_SOURCE", "torch")
    backend = backends.create("openvino")
    assert (backend.source, backend.needs_onnx) == ("torch", False)
    assert OpenVinoBackend(source="onnx").source == "onnx"  # the keyword wins over the environment


# --- verdicts through the runner ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", CI_MODELS)
def test_fp32_passes(model: str) -> None:
    r = run_case(CaseRequest(model, "ov", Precision.FP32))
    assert r.status == Status.PASS, r.reason
    assert (r.executed_precision, r.precision_match) == ("fp32", "exact")
    assert r.metrics["cosine"] > 0.9999
    assert r.metrics["max_abs"] < 1e-3
    assert any("[" in name for name in r.input_sets), "dynamic-size input sets must have run"
    assert r.settings["source"] == "onnx"
    assert r.settings["inference_precision_readback"] == "f32"
    assert (r.settings["num_streams"], r.settings["inference_num_threads"]) == (1, r.settings["threads"])
    assert r.settings["performance_hint"] == "LATENCY"
    assert r.settings["runtime_precisions"], "per-layer-type runtime precisions must be recorded"


@pytest.mark.parametrize("model", CI_MODELS)
def test_fp16_verdict_matches_audit(model: str) -> None:
    r = run_case(CaseRequest(model, "ov", Precision.FP16))
    assert r.status in (Status.PASS, Status.FALLBACK), r.reason
    assert r.metrics["cosine"] > 0.999
    assert r.precision_match == precision_match(Precision.FP16, r.executed_precision)
    assert (r.status == Status.FALLBACK) == (r.precision_match == "fallback")
    assert "compress_to_fp16=True" in r.settings["recipe"]


@pytest.mark.parametrize("model", CI_MODELS)
def test_int8_reads_back_int8(model: str) -> None:
    r = run_case(CaseRequest(model, "ov", Precision.INT8))
    assert r.status == Status.PASS, r.reason
    assert "int8" in compute_types(r.executed_precision), r.settings["kernel_precisions"]
    assert r.metrics["cosine"] > 0.98
    assert r.settings["calibration_samples"] == len(calibration_set(get_model(model)))
    assert r.settings["model_type"] == ("transformer" if model == "transformer_tiny" else "default")


# --- the precision audit against the engine -------------------------------------------------------------------


@pytest.mark.parametrize("model", ["resnet_tiny", "transformer_tiny"])
def test_fp16_audit_reads_what_the_compiled_model_runs(model: str, tmp_path: Path) -> None:
    session = backends.create("ov").load(_model(model), Precision.FP16, tmp_path)
    hint = session.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    kernels = _kernel_types(session, {"Convolution", "FullyConnected", "MatMul"})
    assert session.settings["inference_precision_readback"] == hint
    assert compute_types(session.executed_precision) == kernels, session.settings["kernel_precisions"]
    if not any(f in cpu_flags() for f in FP16_CAPABLE):
        # no fp16 arithmetic: OpenVINO computes in bf16 where the CPU has it (AVX512-BF16, e.g. AMD Zen 4),
        # else in f32; either way the fp16 request fell back
        bf16 = any(f in cpu_flags() for f in ("avx512_bf16", "amx_bf16"))
        assert hint == ("bf16" if bf16 else "f32"), f"f16 hint on a CPU without fp16 arithmetic compiled to {hint}"
        assert kernels == ({"bf16"} if bf16 else {"fp32"})
        if not bf16:
            assert session.executed_precision == "mixed(fp16-storage,fp32-compute)"
        assert precision_match(Precision.FP16, session.executed_precision) == "fallback"


def test_int8_audit_matches_kernels(tmp_path: Path) -> None:
    spec = get_model("srcnn_tiny")
    session = backends.create("ov").load(_model("srcnn_tiny"), Precision.INT8, tmp_path, calibration_set(spec))
    kernels = _kernel_types(session, {"Convolution"})
    assert kernels == {"int8"}
    assert session.settings["kernel_precisions"]["Convolution"] == {"int8": 3}
    assert session.settings["runtime_precisions"]["Convolution"] in ({"u8": 3}, {"i8": 3})


# --- IR cache, sources, shapes, errors ------------------------------------------------------------------------


def test_ir_is_cached_and_corrupt_xml_is_rebuilt(tmp_path: Path) -> None:
    model = _model("resnet_tiny")
    for old in model.cache_dir.glob("ov-onnx-fp32-*"):  # start from no IR; the module's ONNX export is reused
        old.unlink()
    backend = backends.create("ov")
    first = backend.load(model, Precision.FP32, tmp_path)
    xml = Path(first.artifact)
    assert xml.suffix == ".xml"
    assert xml.with_suffix(".bin").exists()
    assert xml.parent == model.cache_dir
    assert first.settings["ir_built"] == ["convert"]
    stamp = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in (xml, xml.with_suffix(".bin"))]

    second = backend.load(_model("resnet_tiny"), Precision.FP32, tmp_path)
    assert second.settings["ir_built"] == []
    assert "convert_s" not in second.settings
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in (xml, xml.with_suffix(".bin"))] == stamp

    xml.write_text("<net>truncated")
    with pytest.warns(RuntimeWarning, match="failed its hash check"):
        third = backend.load(_model("resnet_tiny"), Precision.FP32, tmp_path)
    assert third.settings["ir_built"] == ["convert"]
    feeds = make_feeds(model.spec, np.random.default_rng(0))
    ref = run_torch(model.module(), feeds, model.input_names, model.output_names)
    np.testing.assert_allclose(third.run(feeds)["output"], ref["output"], atol=1e-4)


def test_torch_source_converts_and_matches(tmp_path: Path) -> None:
    model = _model("lstm_tiny")
    session = OpenVinoBackend(source="torch").load(model, Precision.FP32, tmp_path)
    assert session.settings["source"] == "torch"
    assert "-torch-" in Path(session.artifact).name
    for seq in (6, 3, 11):
        feeds = make_feeds(model.spec, np.random.default_rng(seq), sizes={"seq": seq})
        ref = run_torch(model.module(), feeds, model.input_names, model.output_names)
        out = session.run(feeds)
        assert list(out) == ["output"]
        np.testing.assert_allclose(out["output"], ref["output"], atol=1e-5)


@pytest.mark.parametrize(("model", "sizes"), [
    ("resnet_tiny", [{"batch": 1}, {"batch": 3}]),
    ("srcnn_tiny", [{"height": 16, "width": 16}, {"height": 24, "width": 12}]),
])
def test_dynamic_shapes_run_at_every_size(model: str, sizes: list[dict[str, int]], tmp_path: Path) -> None:
    exported = _model(model)
    session = backends.create("ov").load(exported, Precision.FP32, tmp_path)
    for size in sizes:
        feeds = make_feeds(exported.spec, np.random.default_rng(1), sizes=size)
        ref = run_torch(exported.module(), feeds, exported.input_names, exported.output_names)
        out = session.run(feeds)
        assert out["output"].shape == ref["output"].shape
        np.testing.assert_allclose(out["output"], ref["output"], atol=1e-4)


def test_outputs_are_owned_copies(tmp_path: Path) -> None:
    exported = _model("resnet_tiny")
    session = backends.create("ov").load(exported, Precision.FP32, tmp_path)
    a = session.run(make_feeds(exported.spec, np.random.default_rng(1)))["output"]
    kept = a.copy()
    session.run(make_feeds(exported.spec, np.random.default_rng(2)))
    np.testing.assert_array_equal(a, kept)


def test_int8_without_calibration_is_a_conversion_error(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="needs calibration feeds"):
        backends.create("ov").load(_model("resnet_tiny"), Precision.INT8, tmp_path, None)


def test_int8_without_nncf_is_unsupported_with_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nncf", None)
    backend = backends.create("ov")
    model = _model("resnet_tiny")
    assert "pip install nncf" in str(backend.unsupported_reason(model, Precision.INT8))
    assert backend.unsupported_reason(model, Precision.FP32) is None
    with pytest.raises(UnsupportedPrecision, match=r"NNCF .* not installed: pip install nncf"):
        backend.load(model, Precision.INT8, tmp_path, calibration_set(model.spec))
    record = run_case(CaseRequest("resnet_tiny", "ov", Precision.INT8))
    assert record.status == Status.UNSUPPORTED
    assert "nncf" in record.reason


def test_cache_root_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    assert _model("lstm_tiny").cache_dir.is_relative_to(tmp_path)


def test_attention_detection_on_real_ir(tmp_path: Path) -> None:
    import openvino as ov

    found = {}
    for name in ("transformer_tiny", "resnet_tiny", "lstm_tiny"):
        ir = backends.create("ov").load(_model(name), Precision.FP32, tmp_path).artifact
        found[name] = has_attention(ov.Core().read_model(str(ir)))
    assert found == {"transformer_tiny": True, "resnet_tiny": False, "lstm_tiny": False}
