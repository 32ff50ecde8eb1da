"""ONNX Runtime end to end on tiny models at every precision (real engine)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.core.options import CaseRequest
from harness.core.types import Precision, TensorSpec
from harness.run.case import run_case
from model_zoo import register_model

pytest.importorskip("onnxruntime", reason="ort: Python package 'onnxruntime' not installed")
onnx = pytest.importorskip("onnx", reason="ort: Python package 'onnx' not installed (extra 'ort')")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path_factory.getbasetemp() / "ort-cache"))


@pytest.mark.parametrize("model", ["resnet_tiny", "lstm_tiny", "srcnn_tiny"])
def test_fp32_passes_on_every_input_set(model):
    r = run_case(CaseRequest(model, "ort", Precision.FP32))
    assert r.status == "pass", r.reason
    assert r.executed_precision == "fp32"
    assert r.metrics["cosine"] > 0.9999
    assert "random" in r.input_sets
    assert "large" in r.input_sets
    assert any(s.startswith("random[") for s in r.input_sets)  # every declared dynamic size is compared
    assert r.settings["providers"][-1] == "CPUExecutionProvider"
    assert r.export["checker"] == "ok"
    assert r.export["opset"] == 17


def test_fp16_reads_back_what_ran():
    r = run_case(CaseRequest("resnet_tiny", "ort", Precision.FP16))
    assert r.metrics["cosine"] > 0.999
    assert "fp16" in r.executed_precision  # fp16 weights in the file
    # on a CPU without fp16 kernels ORT inserts Casts and computes in fp32: that is a fallback, never a pass
    if "fp32-compute" in r.executed_precision:
        assert (r.status, r.precision_match) == ("fallback", "fallback")
    assert onnx.load(r.artifact).graph.initializer[0].data_type == onnx.TensorProto.FLOAT16


def test_int8_is_static_qdq_and_reads_back_int8_kernels():
    r = run_case(CaseRequest("resnet_tiny", "ort", Precision.INT8))
    assert r.status == "pass", r.reason
    assert "int8" in r.executed_precision
    assert r.precision_match in ("exact", "partial")
    assert r.settings["recipe"].startswith("static QDQ")
    ops = {n.op_type for n in onnx.load(r.artifact).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert all(not s.startswith(("zeros", "ones", "large")) for s in r.input_sets)  # in-distribution only


def test_artifacts_are_cached_between_cases():
    first = run_case(CaseRequest("lstm_tiny", "ort", Precision.INT8))
    second = run_case(CaseRequest("lstm_tiny", "ort", Precision.INT8))
    assert first.artifact == second.artifact
    assert second.export["cached"] is True


@register_model(inputs=[TensorSpec("x", (1, 8))], tags={"test-only"})
def frozen_scalar():
    """Tracing turns float(x.mean()) into a constant: right only on the export example."""

    class Frozen(torch.nn.Module):
        def forward(self, x):
            return x * float(x.mean())

    return Frozen()


def test_a_model_right_only_on_its_export_example_does_not_pass():
    r = run_case(CaseRequest("frozen_scalar", "ort", Precision.FP32))
    assert r.status == "mismatch", r.reason


def test_full_range_u8s8_saturation_is_caught_on_cpus_without_vnni(monkeypatch):
    """ORT's documented u8s8 saturation (no VNNI): the harness must report it, not pass it."""
    from harness.backends._ort_quant import reduce_range_needed as int8_reduce_range

    if not int8_reduce_range():
        pytest.skip("this CPU has VNNI (or is not x86): u8s8 does not saturate here")
    monkeypatch.setenv("HARNESS_ORT_REDUCE_RANGE", "0")
    r = run_case(CaseRequest("mobilenet_tiny", "ort", Precision.INT8))
    assert r.status == "mismatch", (r.status, r.metrics)
    assert r.settings["reduce_range"] is False
    monkeypatch.setenv("HARNESS_ORT_REDUCE_RANGE", "1")
    assert run_case(CaseRequest("mobilenet_tiny", "ort", Precision.INT8)).status == "pass"


def test_one_session_per_case_and_the_executed_precision_needs_no_second_session(monkeypatch):
    """fp32: the graph's types say it all (no profile); fp16: the case's own runs are profiled, the file removed."""
    import onnxruntime as ort

    created: list[bool] = []

    class Counting(ort.InferenceSession):
        def __init__(self, path, sess_options=None, *args, **kwargs):
            created.append(bool(sess_options and sess_options.enable_profiling))
            super().__init__(path, sess_options, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", Counting)
    r = run_case(CaseRequest("resnet_tiny", "ort", Precision.FP32))
    assert (r.status, r.executed_precision, r.settings["profiling"]) == ("pass", "fp32", False), r.reason
    assert created == [False]
    created.clear()
    half = run_case(CaseRequest("resnet_tiny", "ort", Precision.FP16))
    assert created == [True], "one profiled session: the compare runs are the profile"
    assert half.settings["profiling"] is True
    assert "fp16" in half.executed_precision  # read from the profile of the case's own runs
    assert not list(Path(half.artifact).parent.glob(".ort-profile-*")), "the profile file is removed after reading"
