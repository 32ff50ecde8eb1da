"""The pytest plugin, driven through pytester in subprocesses (real engines, tiny models).

Engine-free where the plugin is what is tested (torch and the test-only fault backends); the test of
the records of a real ONNX Runtime run skips without it.
"""

from __future__ import annotations

import json

import pytest
from engines import needs_ort

from harness import backends

pytest_plugins = ["pytester"]

SUITE = """
def test_conformance(case, harness_run):
    record = harness_run(case)
    assert record.status == "pass", record.reason
"""


@pytest.fixture
def suite(pytester, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    pytester.makeconftest('pytest_plugins = ["harness.pytest_plugin"]')
    pytester.makepyfile(test_suite=SUITE)
    return pytester


def test_ids_are_model_backend_precision(suite):
    result = suite.runpytest_subprocess("--collect-only", "-q", "--model", "resnet_tiny", "--backend", "pytorch",
                                        "--backend", "_fault_nan")
    ids = {line.split("[", 1)[1].rstrip("]") for line in result.outlines if "[" in line}
    assert ids == {f"resnet_tiny-{b}-{p}" for b in ("torch", "_fault_nan") for p in ("fp32", "fp16", "int8")}


def test_unknown_backend_exits_nonzero_naming_known_and_available(suite):
    result = suite.runpytest_subprocess("--backend", "tflite")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown backend 'tflite'; known backends: torch, ncnn, ort*"])


def test_requested_unavailable_backend_is_an_error_not_a_skip(suite):
    result = suite.runpytest_subprocess("--backend", "tensorrt", "--model", "resnet_tiny")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    available = ", ".join(backends.available())  # what this environment has (tox -e unit: torch only)
    result.stderr.fnmatch_lines(["*--backend trt was requested but cannot run here: trt: *not installed*"
                                 f"available here: {available}."])


def test_unknown_model_and_precision_are_usage_errors(suite):
    r1 = suite.runpytest_subprocess("--model", "resnet19", "--collect-only")
    assert r1.ret == pytest.ExitCode.USAGE_ERROR
    r1.stderr.fnmatch_lines(["*unknown model 'resnet19'; did you mean*"])
    r2 = suite.runpytest_subprocess("--precision", "int4", "--collect-only")
    assert r2.ret == pytest.ExitCode.USAGE_ERROR
    r2.stderr.fnmatch_lines(["*unknown precision 'int4'; known precisions: fp32, fp16, int8*"])


def test_unavailable_backend_is_skipped_with_reason_in_a_sweep(suite):
    result = suite.runpytest_subprocess("--model", "lstm_tiny", "--precision", "fp32", "--in-process", "-rs",
                                        "--results-dir", str(suite.path / "res"), "--no-report")
    result.stdout.fnmatch_lines(["*SKIPPED*skipped: trt: Python package 'tensorrt' not installed*"])
    assert result.ret == 0


@needs_ort
def test_run_writes_records_and_summary(suite):
    res = suite.path / "res"
    result = suite.runpytest_subprocess("--model", "lstm_tiny", "--backend", "ort", "--in-process",
                                        "--results-dir", str(res), "--run-id", "r1", "--no-report", "-rx")
    result.stdout.fnmatch_lines(["*= harness =*", "backend*fp32*fp16*int8*", "ort *1 pass*",
                                 "*records: *r1/records.jsonl (3 records)*"])
    result.assert_outcomes(passed=2, xfailed=1)  # fp16 runs FP32 kernels on this CPU: a fallback, not a pass
    records = [json.loads(line) for line in (res / "r1" / "records.jsonl").read_text().splitlines()]
    assert {(r["test_id"], r["status"]) for r in records} == {
        ("lstm_tiny-ort-fp32", "pass"), ("lstm_tiny-ort-fp16", "fallback"), ("lstm_tiny-ort-int8", "pass")}
    info = json.loads((res / "r1" / "run.json").read_text())
    assert info["machine"]["versions"]["onnxruntime"]
    assert info["records"] == 3


def test_zoo_file_models_join_the_zoo(suite):
    user = suite.path / "user_models.py"
    user.write_text(
        "import torch\nfrom model_zoo import register_model, TensorSpec\n\n"
        "@register_model(inputs=[TensorSpec('x', (1, 4))], tags={'user'})\n"
        "def user_mlp():\n    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh())\n")
    result = suite.runpytest_subprocess("--zoo-file", str(user), "--tag", "user", "--backend", "torch",
                                        "--precision", "fp32", "--results-dir", str(suite.path / "res"),
                                        "--in-process", "--no-report", "-v")
    result.stdout.fnmatch_lines(["*test_conformance?user_mlp-torch-fp32? PASSED*"])


def test_missing_zoo_file_is_a_usage_error(suite):
    result = suite.runpytest_subprocess("--zoo-file", "nope.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--zoo-file nope.py: no such file*"])


def test_bad_shard_option(suite):
    result = suite.runpytest_subprocess("--shard", "3/2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--shard '3/2': expected I/N*"])
