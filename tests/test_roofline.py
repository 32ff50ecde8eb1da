"""harness.run.roofline: FLOPs from the ONNX graph (checked against PyTorch's counter), CPU peaks per precision."""

from __future__ import annotations

import numpy as np
import pytest
from engines import needs_ort

from harness.core.options import CaseRequest, ExportOptions
from harness.core.types import Precision
from harness.model.inputs import make_feeds
from harness.run import roofline
from model_zoo import get_model


@pytest.fixture
def flops_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path_factory.getbasetemp() / "flops-cache"))


@needs_ort
@pytest.mark.usefixtures("flops_cache")
@pytest.mark.parametrize("name", ["resnet_tiny", "mobilenet_tiny", "srcnn_tiny"])
def test_onnx_flops_equal_torch_flop_counter(name):
    """Two independent counts of the same network: the ONNX graph's and PyTorch's FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    spec = get_model(name)
    counted = roofline.model_flops(CaseRequest(name, "ort", Precision.FP32), spec)
    feeds = make_feeds(spec, np.random.default_rng(0))
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        spec.build()(*[torch.from_numpy(feeds[t.name]) for t in spec.inputs])
    assert counted["flops"] == counter.get_total_flops() > 0
    assert counted["uncounted_nodes"] == []


def _lstm_expected(spec) -> int:
    lstm = next(m for m in spec.build().modules() if type(m).__name__ == "LSTM")
    seq, features = make_feeds(spec, np.random.default_rng(0))["input"].shape[1:]
    h, dirs = lstm.hidden_size, 2 if lstm.bidirectional else 1
    return sum(2 * seq * 1 * dirs * 4 * h * ((features if layer == 0 else h * dirs) + h)
               for layer in range(lstm.num_layers))


@needs_ort
@pytest.mark.usefixtures("flops_cache")
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_onnx_flops_count_every_recurrent_layer(exporter):
    """FlopCounterMode does not see inside nn.LSTM; the ONNX count must: 2 x seq x batch x 4H x (I + H) per
    layer. The dynamo export leaves the second layer's input feature axis symbolic after a Reshape: the
    count takes seq and batch from the layer's output then (it counted the linear head only before)."""
    spec = get_model("lstm_tiny")
    req = CaseRequest("lstm_tiny", "ort", Precision.FP32, export=ExportOptions(exporter=exporter))
    counted = roofline.model_flops(req, spec)
    assert counted["uncounted_nodes"] == []
    assert counted["by_op"]["LSTM"] == _lstm_expected(spec)
    assert counted["flops"] > counted["by_op"]["Gemm"] * 10  # not the head alone


def test_only_a_cached_count_is_read_without_build(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    with pytest.raises(LookupError, match="no FLOPs count cached"):
        roofline.model_flops(CaseRequest("resnet_tiny", "torch", Precision.FP32), get_model("resnet_tiny"), build=False)
    assert not list(tmp_path.rglob("*.onnx"))  # nothing was exported for it


AVX2 = {"avx", "avx2", "fma", "f16c"}
SKX = AVX2 | {"avx512f", "avx512bw"}


@pytest.mark.parametrize(("flags", "kind", "expected"), [
    (AVX2, "fp32", 32.0),  # 2 x 256-bit FMA: 8 lanes x 2 x 2
    (AVX2, "int8", 32.0 * 4 / 3),  # no VNNI: three instructions per 4 MACs per lane
    (AVX2 | {"avx_vnni"}, "int8", 128.0),
    (AVX2, "fp16", 32.0),  # no fp16 arithmetic: converted to fp32
    (SKX, "fp32", 64.0),
    (SKX | {"avx512_vnni"}, "int8", 256.0),
    (SKX | {"avx512_fp16"}, "fp16", 128.0),
    (SKX | {"avx512_bf16"}, "bf16", 128.0),
    (SKX | {"avx512_vnni", "amx_int8", "amx_tile"}, "int8", 2048.0),
])
def test_peak_per_precision_follows_the_instruction_sets(monkeypatch, flags, kind, expected):
    monkeypatch.setattr(roofline, "_cpu_identity", lambda: ("GenuineIntel", 6))
    per_cycle, basis = roofline.peak_ops_per_cycle(set(flags), kind)
    assert per_cycle == pytest.approx(expected)
    assert basis


def test_zen4_runs_512_bit_instructions_on_256_bit_units(monkeypatch):
    monkeypatch.setattr(roofline, "_cpu_identity", lambda: ("AuthenticAMD", 25))
    assert roofline.peak_ops_per_cycle(SKX, "fp32")[0] == 32.0
    assert roofline.peak_ops_per_cycle(SKX | {"avx512_vnni"}, "int8")[0] == 128.0
    monkeypatch.setattr(roofline, "_cpu_identity", lambda: ("AuthenticAMD", 26))  # Zen 5: full-width units
    assert roofline.peak_ops_per_cycle(SKX, "fp32")[0] == 64.0


@pytest.mark.parametrize(("executed", "kind"), [
    ("fp32", "fp32"), ("int8", "int8"), ("mixed(int8 71%,fp32 29%)", "int8"), ("fp16", "fp16"),
    ("mixed(fp16-storage,fp32-compute)", "fp32"), ("", "fp32"), ("unknown", "fp32"),
])
def test_the_peak_follows_the_executed_precision(executed, kind):
    assert roofline.compute_kind(executed) == kind


def test_an_int8_case_is_measured_against_the_int8_peak():
    """On this machine's flags: the int8 peak is above the fp32 one wherever int8 is faster at all, so a fast int8
    kernel no longer shows several hundred percent of the (fp32) peak."""
    fp32 = roofline.cpu_peak_gflops(threads=2, precision="fp32")
    int8 = roofline.cpu_peak_gflops(threads=2, precision="int8")
    if fp32 is None or int8 is None:
        pytest.skip("no AVX CPU or no clock information: peak not derivable here")
    assert int8["peak_gflop_s"] > fp32["peak_gflop_s"]
    assert int8["peak_precision"] == "int8"
    assert "int8" in int8["peak_basis"]


def test_cpu_peak_scales_with_threads():
    full = roofline.cpu_peak_gflops(threads=2)
    if full is None:
        pytest.skip("no AVX CPU or no clock information: peak not derivable here")
    one = roofline.cpu_peak_gflops(threads=1)
    assert one["peak_gflop_s"] * 2 == pytest.approx(full["peak_gflop_s"], abs=0.2)
    assert "fp32" in full["peak_basis"]
