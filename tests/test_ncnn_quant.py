"""ncnn int8 without ncnn's tools: the harness's Python ncnn2table + ncnn2int8 (``_ncnn_quant``) on real pnnx
exports of small models, run by the real ncnn engine."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ncnn", reason="ncnn: Python package 'ncnn' not installed (extra 'ncnn')")
torch = pytest.importorskip("torch", reason="ncnn: Python package 'torch' not installed (pnnx converts from torch)")

from torch import nn  # noqa: E402

from harness import backends  # noqa: E402
from harness.backends import _ncnn_param as nparam  # noqa: E402
from harness.backends import _ncnn_quant as quant  # noqa: E402
from harness.backends import _ncnn_quant_build as int8  # noqa: E402
from harness.backends import _ncnn_tools as tools  # noqa: E402
from harness.core.errors import UnsupportedPrecision  # noqa: E402
from harness.core.options import CaseRequest  # noqa: E402
from harness.core.types import Precision, Status, TensorSpec  # noqa: E402
from harness.model.export import ExportedModel  # noqa: E402
from harness.model.inputs import calibration_set  # noqa: E402
from harness.run.case import run_case  # noqa: E402
from model_zoo import get_model, register_model  # noqa: E402

PYTHON_LABEL = "harness-python (KL)"


@pytest.fixture(scope="module", autouse=True)
def _ncnn_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One temporary artifact cache for the module; ncnn's tools off PATH unless NCNN_TOOLS names them."""
    reason = backends.get("ncnn")().unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(tmp_path_factory.mktemp("hc-ncnn-quant")))
        mp.delenv("HARNESS_NCNN_INT8", raising=False)
        yield


@pytest.fixture
def no_tools(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither NCNN_TOOLS nor ncnn2table/ncnn2int8 on PATH: the Python quantizer builds int8 models."""
    monkeypatch.delenv("NCNN_TOOLS", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))


def _fp32(model: str) -> Path:
    """The pnnx fp32 conversion (.param; .bin beside it) of a zoo model."""
    return backends.create("ncnn", threads=2).convert(ExportedModel(get_model(model)), fp16=False)[0]


def _net(param: Path, int8: bool, **opt: bool):
    import ncnn

    net = ncnn.Net()
    o = net.opt
    o.num_threads, o.use_int8_inference = 2, int8
    o.use_fp16_storage = o.use_fp16_packed = o.use_fp16_arithmetic = o.use_bf16_storage = False
    for k, v in opt.items():
        setattr(o, k, v)
    net.opt = o
    assert net.load_param(str(param)) == 0
    assert net.load_model(str(param.with_suffix(".bin"))) == 0
    return net


def _samples(n: int, shape: tuple[int, ...], seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"in0": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _kl_loop(hist: np.ndarray, target_bin: int = 128) -> int:
    """ncnn2table's KL threshold search written as its C++ loops (merge into target_bin levels, expand, KL)."""
    p = hist / hist.sum()
    best, best_kl = target_bin, math.inf
    for t in range(target_bin, len(hist)):
        clip = np.full(t, 1e-4) + p[:t]
        clip[t - 1] += p[t:].sum()
        per = t / target_bin
        expand = np.full(t, 1e-4)
        for j in range(target_bin):
            start, end = j * per, (t if j == target_bin - 1 else (j + 1) * per)
            lu, rl = math.ceil(start), math.floor(end)
            ls, rs = lu - start, end - rl
            acc = p[lu:rl].sum() + (ls * p[lu - 1] if ls > 0 else 0) + (rs * p[rl] if rs > 0 and rl < t else 0)
            q = acc / per
            expand[lu:rl] += q
            if ls > 0:
                expand[lu - 1] += ls * q
            if rs > 0 and rl < t:
                expand[rl] += rs * q
        kl = float(np.sum(clip * np.log(clip / expand)))
        if kl < best_kl:
            best, best_kl = t, kl
    return best


@pytest.mark.parametrize("power", [1.0, 1.5, 2.0])
def test_kl_search_matches_ncnn2tables_loops(power: float) -> None:
    x = np.abs(np.random.default_rng(int(power * 10)).standard_normal(100_000)) ** power
    hist = np.bincount(np.minimum((x / x.max() * 500).astype(int), 499), minlength=500)
    assert quant.kl_threshold_bin(hist) == _kl_loop(hist)


@pytest.mark.parametrize("model", ["resnet_tiny", "mobilenet_tiny", "lstm_tiny", "transformer_tiny", "warp_tiny"])
def test_param_and_bin_round_trip_byte_for_byte(model: str, tmp_path: Path) -> None:
    """Every layer type pnnx gives these models (conv, depthwise, fc, LSTM, MHA, Gemm, LayerNorm, MemoryData)
    is sized exactly: the split .bin adds up to the file and writes back identical bytes."""
    param = _fp32(model)
    pf = nparam.read_param(param)
    layout = nparam.read_bin(param.with_suffix(".bin"), pf.layers)
    assert not layout.unsized
    assert not layout.opaque
    pf.write(tmp_path / "m.param")
    layout.write(tmp_path / "m.bin")
    assert (tmp_path / "m.bin").read_bytes() == param.with_suffix(".bin").read_bytes()
    assert (tmp_path / "m.param").read_text().split() == param.read_text().split()


class OneLayer(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


LAYERS = {  # name -> (module, input shape with batch)
    "conv3x3s2": (lambda: nn.Conv2d(8, 16, 3, 2, 1), (1, 8, 12, 12)),
    "conv3x3s1": (lambda: nn.Conv2d(8, 16, 3, 1, 1), (1, 8, 12, 12)),
    "depthwise": (lambda: nn.Conv2d(16, 16, 3, 1, 1, groups=16), (1, 16, 12, 12)),
    "linear": (lambda: nn.Linear(64, 10), (1, 64)),
}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_int8_layer_computes_ncnns_int8_arithmetic(kind: str, tmp_path: Path) -> None:
    """ncnn's int8 output of one quantized layer equals the int8 arithmetic done in numpy from the scales we
    wrote, conv(q(x), q(w)) / (s_x * s_w) + bias: the file layout, scale semantics and weight codes are right."""
    make, shape = LAYERS[kind]
    torch.manual_seed(0)
    module = OneLayer(make()).eval()
    name = f"ncnn_quant_test_{kind}"
    register_model(inputs=[TensorSpec("x", shape)], name=name)(lambda: module)
    param = _fp32(name)
    out = tmp_path / "q.param"
    report = quant.ptq(param, out, _net(param, int8=False), _samples(4, shape[1:], 1),
                       quant.QuantSettings(method="minmax"))
    assert report["quantized_layers"] == 1
    (la,) = [la for la in nparam.read_param(out).layers if la.type in quant.QUANT_TYPES]
    assert la.params["8"] == ("1" if kind == "depthwise" else "2")
    table = quant.ScaleTable.read(out.with_suffix(".table"))
    sx, sw = table.inputs[la.name], table.weights[la.name]
    if kind == "conv3x3s1":  # ncnn2table's 6-bit rule for winograd-eligible convs
        np.testing.assert_allclose(sw, 31 / np.abs(module.layer.weight.detach().numpy()).reshape(16, -1).max(1),
                                   rtol=1e-5)
    x = _samples(1, shape[1:], 2)[0]
    import ncnn

    ex = _net(out, int8=True, use_packing_layout=False).create_extractor()
    ex.input("in0", ncnn.Mat(x["in0"]))
    got = np.array(ex.extract("out0")[1]).copy()
    w = module.layer.weight.detach().numpy().astype(np.float64)
    wq = quant.quantize_to_int8(w.reshape(len(sw), -1), sw[:, None]).reshape(w.shape).astype(np.float64)
    xq = torch.from_numpy(quant.quantize_to_int8(x["in0"], sx).astype(np.float64))[None]
    bias = module.layer.bias.detach().numpy()
    if kind == "linear":
        want = (xq.numpy() @ wq.T)[0] / (sx * sw) + bias
    else:
        acc = nn.functional.conv2d(xq, torch.from_numpy(wq), None, module.layer.stride, module.layer.padding, 1,
                                   module.layer.groups).numpy()[0]
        want = acc / (sx * sw[:, None, None]) + bias[:, None, None]
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


def test_layers_after_an_unknown_type_are_found_from_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer type without a sizing rule does not stop int8: the layers after the last such layer are located
    walking back from the end of the .bin, the span in between is copied unchanged and stays fp32, and says so."""
    param = _fp32("mobilenet_tiny")
    spec = nparam.weight_spec
    monkeypatch.setattr(nparam, "weight_spec", lambda la: (_ for _ in ()).throw(nparam.UnsizedLayer(la.type))
                        if la.type == "ConvolutionDepthWise" else spec(la))
    pf = nparam.read_param(param)
    layout = nparam.read_bin(param.with_suffix(".bin"), pf.layers)
    dws = [la.name for la in pf.layers if la.type == "ConvolutionDepthWise"]
    assert dws[0] in layout.unsized
    assert dws[-1] in layout.unsized
    assert layout.opaque
    layout.write(tmp_path / "same.bin")
    assert (tmp_path / "same.bin").read_bytes() == param.with_suffix(".bin").read_bytes()
    out = tmp_path / "q.param"
    samples = tools.calibration_items(calibration_set(get_model("mobilenet_tiny")), get_model("mobilenet_tiny").inputs)
    report = quant.ptq(param, out, _net(param, int8=False), samples, quant.QuantSettings())
    assert report["kept_fp32"][dws[0]].startswith(f"its weights follow layer {dws[0]!r} (ConvolutionDepthWise)")
    terms = {la.name: la.geti(8) for la in nparam.read_param(out).layers if la.type in quant.QUANT_TYPES}
    names = list(terms)
    assert terms[names[0]] > 0
    assert terms[names[-1]] > 0
    assert all(terms[n] == 0 for n in dws)
    x = samples[0]
    y32 = quant.extract(_net(param, int8=False), x, ["out0"])["out0"]
    y8 = quant.extract(_net(out, int8=True), x, ["out0"])["out0"]
    assert _cos(y32, y8) > 0.99


def test_backend_int8_without_tools_is_python_int8(no_tools: None) -> None:
    r = run_case(CaseRequest("resnet_tiny", "ncnn", Precision.INT8))
    assert r.status == Status.PASS.value, r.reason
    assert r.executed_precision == "int8"
    s = r.settings
    assert (s["int8_quantizer"], s["calibration_method"], s["calibration_samples"]) == (PYTHON_LABEL, "kl", 16)
    assert s["options"]["use_int8_inference"] is True
    assert s["int8_layers"] == 7
    assert s["int8_fp32_layers"] == {}
    assert s["bin_weight_blobs"] == {"int8": 7, "fp16": 0}  # quantized from pnnx's fp32 weights (fp16=0), kept fp32
    int8_bin = Path(r.artifact).with_suffix(".bin").stat().st_size
    fp32_bin = _fp32("resnet_tiny").with_suffix(".bin").stat().st_size
    assert int8_bin < 0.35 * fp32_bin


class Conv1dHead(nn.Module):
    """A 1-D convolution (ncnn Convolution1D: not quantized) and a linear head (InnerProduct: int8)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3)
        self.fc = nn.Linear(8 * 14, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_layers_the_quantizer_does_not_handle_stay_fp32_and_the_audit_says_so(no_tools: None) -> None:
    register_model(inputs=[TensorSpec("x", (1, 4, 16))], name="ncnn_quant_test_conv1d")(Conv1dHead)
    r = run_case(CaseRequest("ncnn_quant_test_conv1d", "ncnn", Precision.INT8))
    assert r.status == Status.PASS.value, r.reason
    assert r.executed_precision == "mixed(fp32 50%,int8 50%)"
    assert r.precision_match == "partial"
    (conv,) = r.settings["int8_fp32_layers"]
    assert r.settings["int8_fp32_layers"][conv] == f"{PYTHON_LABEL} does not quantize Convolution1D"
    assert r.settings["int8_layers"] == 1


@pytest.mark.parametrize(("model", "types"), [("transformer_tiny", {"Gemm", "MultiHeadAttention"}),
                                              ("lstm_tiny", {"LSTM", "InnerProduct"})])
def test_weight_only_layers_compute_int8(model: str, types: set[str], tmp_path: Path) -> None:
    """Gemm, MultiHeadAttention and LSTM get ncnn2int8's weight-only int8: int8 codes in the .bin, and ncnn
    computes with them (the output moves off fp32, stays close, and follows the weight scales we wrote)."""
    param, spec = _fp32(model), get_model(model)
    samples = tools.calibration_items(calibration_set(spec), spec.inputs)
    out = tmp_path / "q.param"
    report = quant.ptq(param, out, _net(param, int8=False), samples, quant.QuantSettings())
    assert report["kept_fp32"] == {}
    qp = nparam.read_param(out)
    layout = nparam.read_bin(out.with_suffix(".bin"), qp.layers)
    for la, blobs in zip(qp.layers, layout.weights, strict=True):
        if la.type in types - {"InnerProduct"}:  # InnerProduct: calibrated, checked elsewhere
            assert la.geti(18 if la.type != "LSTM" else 8) == 2, la.line()
            assert any(b.tag == nparam.TAG_INT8 for b in blobs), la.name
    y32 = quant.extract(_net(param, int8=False), samples[0], ["out0"])["out0"]
    y8 = quant.extract(_net(out, int8=True), samples[0], ["out0"])["out0"]
    assert 0 < np.abs(y32 - y8).max()
    assert _cos(y32, y8) > 0.999
    fp32_layout = nparam.read_bin(param.with_suffix(".bin"), nparam.read_param(param).layers)
    weight_only = types - {"InnerProduct"}
    doubled = [tuple(nparam.raw_blob(2 * b.to_float()) if i >= len(orig) else b for i, b in enumerate(blobs))
               if la.type in weight_only else blobs  # the buffers appended to an fp32 layer are its int8 scales
               for la, blobs, orig in zip(qp.layers, layout.weights, fp32_layout.weights, strict=True)]
    nparam.BinLayout(tuple(doubled)).write(tmp_path / "scaled.bin")
    shutil.copyfile(out, tmp_path / "scaled.param")
    y8_scaled = quant.extract(_net(tmp_path / "scaled.param", int8=True), samples[0], ["out0"])["out0"]
    assert np.abs(y8_scaled - y8).max() > 10 * np.abs(y32 - y8).max()  # the int8 scales are what ncnn uses


def test_cache_key_covers_calibration(no_tools: None, tmp_path: Path) -> None:
    backend = backends.create("ncnn", threads=2)
    model = ExportedModel(get_model("resnet_tiny"))
    cal = calibration_set(model.spec)[:12]  # a set no other test quantizes with
    first, report = backend._int8(model, _fp32("resnet_tiny"), cal)
    again, report_again = backend._int8(model, _fp32("resnet_tiny"), cal)
    other, _ = backend._int8(model, _fp32("resnet_tiny"), cal[:8])
    assert first == again
    assert report_again["int8_cached"]
    assert not report["int8_cached"]
    assert other != first
    assert report_again["calibration_samples"] == 12
    assert quant.ScaleTable.read(first.with_suffix(".table")).inputs  # the scales ship with the artifact


def test_digits_int8_keeps_99_percent_of_fp32_accuracy(no_tools: None) -> None:
    acc = {p: run_case(CaseRequest("digits_cnn", "ncnn", p, accuracy=True)) for p in (Precision.FP32, Precision.INT8)}
    assert acc[Precision.INT8].executed_precision == "int8"
    assert acc[Precision.INT8].accuracy >= 0.99 * acc[Precision.FP32].accuracy, {p: r.accuracy for p, r in acc.items()}


def test_forcing_the_tools_without_them_is_unsupported_and_backends_lists_it(
        no_tools: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main

    backend = backends.create("ncnn")
    assert backend.precision_support() == dict.fromkeys(Precision)  # python int8 here
    monkeypatch.setenv("HARNESS_NCNN_INT8", "tools")
    with pytest.raises(UnsupportedPrecision, match="ncnn int8 needs ncnn2table and ncnn2int8"):
        int8.int8_quantizer()
    why = f"{tools.MISSING_REASON} (or unset HARNESS_NCNN_INT8=tools to quantize with the harness's Python port)"
    assert backend.precision_support()[Precision.INT8] == why
    assert main(["backends"]) == 0
    ncnn_row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("ncnn "))
    assert "fp32,fp16" in ncnn_row
    assert f"int8: {why}" in ncnn_row


def _tools_or_skip() -> dict[str, Path]:
    try:
        return tools.find_tools()
    except UnsupportedPrecision as exc:
        pytest.skip(f"needs ncnn's own tools to compare with: {exc}")


@pytest.mark.parametrize("model", ["resnet_tiny", "mobilenet_tiny"])
def test_scale_table_matches_ncnn2table(model: str, tmp_path: Path) -> None:
    """Where ncnn's tools exist: the same calibration gives the same weight scales and KL input scales
    (within one histogram bin of 128) as ncnn2table."""
    found = _tools_or_skip()
    tools.check_npy_support(found["ncnn2table"])
    param, spec = _fp32(model), get_model(model)
    cal = calibration_set(spec)
    lists, shapes = tools.write_calibration(cal, spec.inputs, tmp_path)
    tools.run_tool(tools.table_command(found["ncnn2table"], param, param.with_suffix(".bin"), lists, "ref.table",
                                       shapes, 2), tmp_path, [tmp_path / "ref.table"])
    ref = quant.ScaleTable.read(tmp_path / "ref.table")
    out = tmp_path / "ours.param"
    exact_kl = quant.QuantSettings(kl_max_saturation=None)  # ncnn2table has no saturation fallback
    quant.ptq(param, out, _net(param, int8=False), tools.calibration_items(cal, spec.inputs), exact_kl)
    ours = quant.ScaleTable.read(out.with_suffix(".table"))
    assert sorted(ours.weights) == sorted(ref.weights)
    assert sorted(ours.inputs) == sorted(ref.inputs)
    for name in ref.weights:
        np.testing.assert_allclose(ours.weights[name], ref.weights[name], rtol=1e-4, err_msg=name)
    for name in ref.inputs:
        assert ours.inputs[name] == pytest.approx(ref.inputs[name], rel=1 / 128), name
    shutil.rmtree(tmp_path / "cal", ignore_errors=True)


def test_audit_counts_int8_only_with_scales_weights_and_int8_inference() -> None:
    """A compute layer is int8 when its .param carries the int8 flag, the .bin holds int8 weights and ncnn's
    int8 inference is on (Gemm and MultiHeadAttention select their int8 kernels from their weights alone)."""
    conv = nparam.ParamLayer("Convolution", "conv", params={"8": "2"})
    gemm = nparam.ParamLayer("Gemm", "gemm", params={"18": "2"})
    fc = nparam.ParamLayer("InnerProduct", "fc")
    embed = nparam.ParamLayer("Embed", "embed")
    loaded = [(la.name, la.type) for la in (conv, gemm, fc, embed)] + [("relu", "ReLU")]
    layers = [conv, gemm, fc, embed]
    counts, fp32 = int8.int8_audit(layers, loaded, True, 2, PYTHON_LABEL, {"fc": "kept fp32 on request"})
    assert counts == {"int8": 2, "fp32": 2}
    assert fp32 == {"fc": "kept fp32 on request", "embed": f"{PYTHON_LABEL} does not quantize Embed"}
    counts, fp32 = int8.int8_audit(layers, loaded, False, 2, tools.TOOLS_LABEL, {})
    assert fp32["conv"] == "int8 scales in the .param, but ncnn's use_int8_inference is off"
    assert "gemm" not in fp32
    assert fp32["fc"] == f"InnerProduct left fp32 by {tools.TOOLS_LABEL}"
    counts, fp32 = int8.int8_audit(layers, loaded, True, 0, PYTHON_LABEL, {})
    assert counts == {"fp32": 4}
    assert fp32["conv"] == "int8 scales in the .param, but the .bin holds no int8 weights"
