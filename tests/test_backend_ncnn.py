"""The ncnn backend on the real engine (pnnx conversion, ncnn Python runtime) with the tiny CI models."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from harness import backends
from harness.core.errors import UnsupportedPrecision
from harness.core.options import CaseRequest
from harness.core.types import Precision, Status, TensorSpec
from harness.model.export import ExportedModel
from harness.model.inputs import calibration_set
from harness.run.case import run_case
from model_zoo import get_model, register_model

CI_MODELS = ["resnet_tiny", "srcnn_tiny", "mobilenet_tiny", "transformer_tiny", "lstm_tiny"]
MISSING = ("ncnn int8 needs ncnn2table and ncnn2int8 (not shipped in any pip package): build ncnn from source "
           "(tools/quantize) and put them on PATH or set NCNN_TOOLS=<dir>")


@pytest.fixture(scope="module", autouse=True)
def _ncnn_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One temporary artifact cache for the module (conversions are reused across tests)."""
    reason = backends.get("ncnn")().unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(tmp_path_factory.mktemp("hc-ncnn")))
        yield


def _run(model: str, precision: Precision):
    return run_case(CaseRequest(model, "ncnn", precision))


@pytest.mark.parametrize("model", CI_MODELS)
def test_fp32_passes(model: str) -> None:
    r = _run(model, Precision.FP32)
    assert r.status == Status.PASS.value, r.reason
    assert r.executed_precision == "fp32"
    assert r.metrics["cosine"] >= 0.9999
    opts = r.settings["options"]
    assert opts["use_fp16_storage"] is False
    assert opts["use_fp16_packed"] is False
    assert opts["use_fp16_arithmetic"] is False
    assert opts["use_bf16_storage"] is False
    assert r.settings["bin_weight_blobs"]["fp16"] == 0
    assert Path(r.artifact).suffix == ".param"
    assert Path(r.artifact).with_suffix(".bin").is_file()
    # batch > 1 (run per element) and other dynamic sizes were compared too
    assert len(r.input_sets) == 5 + sum(len(v) - 1 for v in get_model(model).dynamic_sizes.values())


@pytest.mark.parametrize("model", ["resnet_tiny", "transformer_tiny", "lstm_tiny"])
def test_fp16_reports_what_the_cpu_executed(model: str) -> None:
    r = _run(model, Precision.FP16)
    assert r.status in (Status.PASS.value, Status.FALLBACK.value), r.reason
    assert r.metrics["cosine"] >= 0.999
    assert r.settings["options"]["use_fp16_storage"]
    assert r.settings["options"]["use_fp16_arithmetic"]
    assert r.settings["bin_weight_blobs"]["fp16"] > 0  # pnnx fp16=1 stored the weights as fp16
    if not r.settings["cpu"]["arm_asimdhp"]:  # x86: fp16 weights, fp32 arithmetic -> not fp16 compute
        assert r.executed_precision == "mixed(fp16-storage,fp32-compute)"
        assert r.status == Status.FALLBACK.value
        assert r.precision_match == "fallback"
    else:
        assert "fp16" in r.executed_precision
        assert r.precision_match in ("exact", "partial")


def test_int8_forced_to_absent_tools_is_unsupported_with_the_fix(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    """Without the tools int8 is built in Python (tests/test_ncnn_quant.py); asked for explicitly, they must exist."""
    monkeypatch.delenv("NCNN_TOOLS", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("HARNESS_NCNN_INT8", "tools")
    r = _run("resnet_tiny", Precision.INT8)
    assert r.status == Status.UNSUPPORTED.value
    assert r.reason == f"{MISSING} (or unset HARNESS_NCNN_INT8=tools to quantize with the harness's Python port)"


def test_int8_tools_dir_without_tools_names_the_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NCNN_TOOLS", str(tmp_path))
    (tmp_path / "ncnn2table").write_text("#!/bin/sh\n")
    (tmp_path / "ncnn2table").chmod(0o755)
    r = _run("resnet_tiny", Precision.INT8)
    assert r.status == Status.UNSUPPORTED.value
    assert f"NCNN_TOOLS={tmp_path} lacks executable ncnn2int8" in r.reason
    assert MISSING in r.reason
    assert r.reason.endswith("(or unset NCNN_TOOLS to quantize with the harness's Python port)")


class ArgmaxHead(nn.Module):
    """A linear layer followed by argmax: pnnx keeps torch.argmax, which ncnn does not implement."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.argmax(self.fc(x), dim=-1).float()


def test_unsupported_op_is_convert_failed_with_engine_message() -> None:
    @register_model(inputs=[TensorSpec("input", (1, 8))], name="ncnn_test_argmax_head")
    def ncnn_test_argmax_head() -> nn.Module:
        return ArgmaxHead()

    r = _run("ncnn_test_argmax_head", Precision.FP32)
    assert r.status == Status.CONVERT_FAILED.value, r.reason
    assert "layer torch.argmax not exists or registered" in r.reason  # ncnn's own message
    assert "pnnx left ops ncnn does not implement:" in r.reason
    assert "torch.argmax (torch.argmax_0)" in r.reason


class TokenClassifier(nn.Module):
    """Embedding + linear head on int64 token ids (ncnn Embed reads ids bit-cast to float32)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.fc = nn.Linear(16, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(ids))


def test_integer_token_ids_run_through_embed() -> None:
    @register_model(inputs=[TensorSpec("ids", (1, "seq"), dtype="int64", low=0, high=50)],
                    dynamic_sizes={"seq": (7, 4)}, name="ncnn_test_token_classifier")
    def ncnn_test_token_classifier() -> nn.Module:
        return TokenClassifier()

    r = _run("ncnn_test_token_classifier", Precision.FP32)
    assert r.status == Status.PASS.value, r.reason
    assert "random[seq=4]" in r.input_sets
    assert r.settings["integer_inputs"] == "bit-cast int32 -> float32 for ncnn Embed"


# --- int8 tool plumbing: fake ncnn2table/ncnn2int8 that are real shell scripts recording their argv. These
# --- test our command lines and files, not the engine (the real tools are not obtainable here).

USAGE_WITH_NPY = "  type=0/1, 0:image,1:npy"
FAKE_TABLE = """#!/bin/sh
d="$(dirname "$0")"
if [ $# -eq 0 ]; then echo "Usage: ncnn2table [ncnnparam] [ncnnbin] [list,...] [ncnntable] [(key=value)...]" >&2
  echo "{usage}" >&2; exit 255; fi
printf '%s\\n' "$@" > "$d/ncnn2table.argv"
cp list0.txt "$d/list0.txt"; cp "$(head -n 1 list0.txt)" "$d/first.npy"; wc -l < list0.txt > "$d/count"
{body}
"""
FAKE_INT8 = """#!/bin/sh
d="$(dirname "$0")"
printf '%s\\n' "$@" > "$d/ncnn2int8.argv"
cp "$1" "$3"; cp "$2" "$4"
"""


def _fake_tools(folder: Path, usage: str = USAGE_WITH_NPY, body: str = 'echo "conv_param_0 1.0" > "$4"') -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("ncnn2table", FAKE_TABLE.format(usage=usage, body=body)), ("ncnn2int8", FAKE_INT8)):
        (folder / name).write_text(text)
        (folder / name).chmod((folder / name).stat().st_mode | stat.S_IXUSR)
    return folder


def test_int8_tool_plumbing_with_recording_fake_tools(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = _fake_tools(tmp_path / "tools")
    monkeypatch.setenv("NCNN_TOOLS", str(fake))
    spec = get_model("resnet_tiny")
    calibration = calibration_set(spec)
    backend = backends.create("ncnn", threads=2)
    with backend.load(ExportedModel(spec), Precision.INT8, tmp_path, calibration) as session:
        out = session.run({"input": calibration[0]["input"]})["output"]
        assert out.shape == (1, 10)
        assert np.isfinite(out).all()
        # the fake ncnn2int8 copied the fp32 model: the readback must say so, not echo the request
        assert session.executed_precision == "fp32"
        assert session.settings["options"]["use_int8_inference"] is True
        assert session.settings["int8_quantizer"] == "ncnn2table+ncnn2int8"
        assert session.settings["calibration_samples"] == len(calibration)
        assert session.settings["int8_fp32_layers"]["linear_7"] == "InnerProduct left fp32 by ncnn2table+ncnn2int8"
        assert session.artifact.with_suffix(".table").read_text() == "conv_param_0 1.0\n"  # the table ships too
    argv = (fake / "ncnn2table.argv").read_text().splitlines()
    assert Path(argv[0]).name.startswith("ncnn-fp32-")
    assert argv[0].endswith(".ncnn.param")
    assert argv[1] == argv[0].removesuffix(".param") + ".bin"
    assert argv[2:] == ["list0.txt", "model.table", "shape=[32,32,3]", "method=kl", "type=1", "thread=2"]
    assert int((fake / "count").read_text()) == len(calibration)
    first = np.load(fake / "first.npy")  # batch axis removed, float32, the first calibration sample
    np.testing.assert_array_equal(first, calibration[0]["input"][0])
    assert first.dtype == np.float32
    argv8 = (fake / "ncnn2int8.argv").read_text().splitlines()
    assert argv8[:2] == argv[:2]
    assert argv8[4] == "model.table"
    assert Path(argv8[2]).name.startswith("ncnn-int8-")
    assert argv8[3] == argv8[2].removesuffix(".param") + ".bin"


def test_int8_tool_failure_is_convert_failed_with_its_output(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = _fake_tools(tmp_path / "tools", body='echo "fake failure: shape mismatch!" >&2; exit 1')
    monkeypatch.setenv("NCNN_TOOLS", str(fake))
    r = _run("resnet_tiny", Precision.INT8)
    assert r.status == Status.CONVERT_FAILED.value
    assert "ncnn2table exited 1: fake failure: shape mismatch!" in r.reason


def test_int8_old_ncnn2table_without_npy_mode_is_unsupported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = _fake_tools(tmp_path / "tools", usage="  pixel=RAW/RGB/BGR/GRAY/RGBA/BGRA,...")
    monkeypatch.setenv("NCNN_TOOLS", str(fake))
    with pytest.raises(UnsupportedPrecision, match="no npy input mode"):
        backends.create("ncnn").load(ExportedModel(get_model("resnet_tiny")), Precision.INT8, tmp_path,
                                     calibration_set(get_model("resnet_tiny")))


def test_int8_readback_counts_layers_with_int8_scale_terms(tmp_path: Path) -> None:
    """The int8 audit parses the .param ncnn loads: compute layers with an int8_scale_term count as int8."""
    from harness.backends import _ncnn_tools as nt
    from harness.core.precision import summarize

    param = tmp_path / "m.param"
    param.write_text("7767517\n5 5\nInput in0 0 1 in0\n"
                     "Convolution conv_0 1 1 in0 1 0=8 1=3 6=216 8=2\n"
                     "ConvolutionDepthWise dw_0 1 1 1 2 0=8 1=3 6=72 7=8 8=1\n"
                     "MultiHeadAttention mha_0 1 1 2 3 0=32 1=4 2=1024\n"
                     "InnerProduct fc_0 1 1 3 out0 0=10 1=1 2=80 8=0\n")
    counts = nt.int8_layer_counts(nt.parse_param(param))
    assert counts == {"int8": 2, "fp32": 2}
    assert summarize(counts) == "mixed(int8 50%,fp32 50%)"
