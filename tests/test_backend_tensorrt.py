"""TensorRT backend: the GPU-free pieces everywhere, the engine itself only where tensorrt and a GPU exist."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from engines import needs_ort

from harness import backends
from harness.backends import _trt_tools as ts
from harness.core.cache import feeds_digest
from harness.core.errors import BackendUnavailable
from harness.core.precision import compute_types, summarize
from harness.core.types import Precision, TensorSpec

if TYPE_CHECKING:
    from harness.model.export import ExportedModel



EXACT_NOT_INSTALLED = ("trt: Python package 'tensorrt' not installed (pip install -e '.[trt]'; "
                       "needs an NVIDIA GPU with CUDA)")
EXACT_NO_DEVICE = "trt: no CUDA device visible (torch.cuda.is_available() is False / cudaGetDeviceCount=0)"
TRT_INSTALLED = importlib.util.find_spec("tensorrt") is not None


# --- registration, import and availability --------------------------------------------------------------------


def test_module_imports_without_tensorrt() -> None:
    code = ("import sys, harness.backends.tensorrt, harness.backends._trt_tools; "
            "bad = [m for m in ('tensorrt', 'cuda') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_registered_under_name_and_alias() -> None:
    from harness.backends.tensorrt import TrtBackend

    assert backends.get("trt") is TrtBackend
    assert backends.get("tensorrt") is TrtBackend
    assert "trt" in backends.names()


def test_unknown_int8_mode_is_refused() -> None:
    from harness.backends.tensorrt import TrtBackend

    with pytest.raises(ValueError, match="unknown TensorRT int8 mode 'fast'; known: qdq, calibrator"):
        TrtBackend(int8_mode="fast")


@pytest.mark.skipif(TRT_INSTALLED, reason="tensorrt is installed here; this checks the message on machines without it")
@pytest.mark.parametrize("name", ["trt", "tensorrt"])
def test_create_raises_exact_message_without_tensorrt(name: str) -> None:
    assert EXACT_NOT_INSTALLED == ts.NOT_INSTALLED
    with pytest.raises(BackendUnavailable) as info:
        backends.create(name)
    assert str(info.value).startswith(EXACT_NOT_INSTALLED + ". Available backends here: ")
    assert "trt" not in backends.available()


@pytest.mark.parametrize(("env", "expected"), [
    (ts.TrtEnvironment(tensorrt_found=False), EXACT_NOT_INSTALLED),
    (ts.TrtEnvironment(True, "ImportError: libnvonnxparser.so.10: cannot open shared object file"),
     "trt: Python package 'tensorrt' is installed but 'import tensorrt' failed: ImportError: libnvonnxparser.so.10: "
     "cannot open shared object file (the TensorRT libraries must match the wheel and be loadable; "
     "needs an NVIDIA GPU with CUDA)"),
    (ts.TrtEnvironment(True, None, torch_cuda=False, torch_version="2.13.0+cpu"), EXACT_NO_DEVICE),
    (ts.TrtEnvironment(True, None, torch_cuda=False, torch_version="2.13.0+cpu", cuda_device_count=0),
     EXACT_NO_DEVICE),
    (ts.TrtEnvironment(True, None, torch_cuda=False, torch_version="2.13.0+cpu", cuda_device_count=2),
     "trt: cudaGetDeviceCount=2 but torch 2.13.0+cpu reports torch.cuda.is_available() False; this backend "
     "allocates device buffers with torch CUDA tensors: install a CUDA build of torch"),
    (ts.TrtEnvironment(True, None, torch_cuda=True, torch_version="2.13.0+cu128", cuda_device_count=1), None),
])
def test_unavailable_reason_decisions(env: ts.TrtEnvironment, expected: str | None) -> None:
    assert ts.unavailable_reason(env) == expected


def test_probe_on_this_machine() -> None:
    env = ts.probe_environment()
    assert env.tensorrt_found == TRT_INSTALLED
    if not TRT_INSTALLED:
        assert ts.unavailable_reason(env) == EXACT_NOT_INSTALLED


def _create_with_fake_tensorrt(tmp_path: Path, init_source: str) -> str:
    """Run ``create('trt')`` in a child whose path holds a stand-in ``tensorrt`` package (fault injection)."""
    fake = tmp_path / "fake_tensorrt_root" / "tensorrt"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(init_source)
    code = textwrap.dedent("""
        from harness import backends
        from harness.core.errors import BackendUnavailable
        try:
            backends.create("trt")
        except BackendUnavailable as exc:
            print(exc)
        else:
            print("AVAILABLE")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_broken_tensorrt_install_reports_the_import_error(tmp_path: Path) -> None:
    out = _create_with_fake_tensorrt(tmp_path, 'raise ImportError("libnvonnxparser.so.10: cannot open shared '
                                               'object file: No such file or directory")\n')
    assert out.startswith("trt: Python package 'tensorrt' is installed but 'import tensorrt' failed: ImportError: "
                          "libnvonnxparser.so.10: cannot open shared object file"), out


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_importable_tensorrt_without_gpu_reports_no_device(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible here; the no-device message cannot appear")
    out = _create_with_fake_tensorrt(tmp_path, "__version__ = '10.0.0'\n")
    assert out.startswith(EXACT_NO_DEVICE + ". Available backends here: "), out


# --- optimization profiles -------------------------------------------------------------------------------------


def test_profile_shapes_of_zoo_models() -> None:
    from model_zoo import get_model

    assert ts.profile_shapes(get_model("resnet_tiny")) == {"input": ((1, 3, 32, 32), (1, 3, 32, 32), (3, 3, 32, 32))}
    assert ts.profile_shapes(get_model("srcnn_tiny")) == {"input": ((1, 3, 16, 12), (1, 3, 16, 16), (1, 3, 24, 16))}
    assert ts.profile_shapes(get_model("transformer_tiny")) == {"input": ((1, 5, 32), (1, 8, 32), (1, 8, 32))}
    assert ts.profile_shapes(get_model("mobilenet_tiny")) == {"input": ((1, 3, 32, 32),) * 3}


def test_profile_shapes_share_axes_across_inputs() -> None:
    from harness.core.spec import ModelSpec

    spec = ModelSpec(name="two_inputs", factory=lambda: None, inputs=(
        TensorSpec("x", ("batch", "seq", 4)), TensorSpec("mask", ("batch", "seq"), "int64")),
        dynamic_sizes={"batch": (2, 1, 4), "seq": (7, 9)})
    assert ts.profile_shapes(spec) == {"x": ((1, 7, 4), (2, 7, 4), (4, 9, 4)),
                                       "mask": ((1, 7), (2, 7), (4, 9))}


# --- calibration -----------------------------------------------------------------------------------------------


def _feeds(n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((1, 3)), "ids": np.full((1, 2), i, dtype=np.int64)} for i in range(n)]


def test_calibration_batches_join_consecutive_feeds() -> None:
    feeds = _feeds(5)
    batches = list(ts.calibration_batches(feeds, ["x", "ids"], batch_size=2, dtypes={"ids": np.int32}))
    assert len(batches) == 2  # the fifth sample cannot fill a batch of two
    for i, batch in enumerate(batches):
        assert batch["x"].dtype == np.float32
        assert batch["x"].flags.c_contiguous
        assert batch["x"].shape == (2, 3)
        np.testing.assert_array_equal(batch["x"], np.concatenate([feeds[2 * i]["x"], feeds[2 * i + 1]["x"]])
                                      .astype(np.float32))
        assert batch["ids"].dtype == np.int32
        assert batch["ids"][:, 0].tolist() == [2 * i, 2 * i + 1]


def test_calibration_batches_of_one_keep_each_sample_and_make_it_contiguous() -> None:
    feeds = [{"x": np.arange(12, dtype=np.float64).reshape(3, 4).T[None]} for _ in range(3)]
    assert not feeds[0]["x"].flags.c_contiguous
    batches = list(ts.calibration_batches(feeds, ["x"]))
    assert len(batches) == 3
    assert batches[0]["x"].flags.c_contiguous
    assert batches[0]["x"].dtype == np.float32
    np.testing.assert_array_equal(batches[0]["x"], feeds[0]["x"])


def test_calibration_batches_errors_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="batch size must be >= 1"):
        next(ts.calibration_batches(_feeds(2), ["x"], batch_size=0))
    with pytest.raises(ValueError, match="2 calibration samples cannot fill one batch of 4"):
        next(ts.calibration_batches(_feeds(2), ["x"], batch_size=4))
    with pytest.raises(KeyError, match=r"have no input 'y' \(they have \['ids', 'x'\]\)"):
        next(ts.calibration_batches(_feeds(2), ["y"]))


def test_calibration_digest_follows_content() -> None:
    a, b = _feeds(3), _feeds(3)
    assert feeds_digest(a) == feeds_digest(b)
    b[1]["x"] = b[1]["x"] + 1e-6
    assert feeds_digest(a) != feeds_digest(b)
    assert feeds_digest(a) != feeds_digest(a[:2])


def test_calibration_cache_read_write(tmp_path: Path) -> None:
    cache = ts.CalibrationCache(tmp_path / "sub" / "calib.cache")
    assert cache.read() is None
    cache.write(memoryview(b"TRT-1000-EntropyCalibration2\ninput: 3c010a14\n"))
    assert cache.read() == b"TRT-1000-EntropyCalibration2\ninput: 3c010a14\n"
    assert [p.name for p in cache.path.parent.iterdir()] == ["calib.cache"]  # no temporary left behind
    cache.path.write_bytes(b"")
    assert cache.read() is None  # an empty cache means: calibrate again


# --- engine cache key ------------------------------------------------------------------------------------------


def test_engine_cache_key_changes_with_every_input() -> None:
    base = {"onnx_sha256": "a" * 64, "precision": "int8", "trt_version": "10.9.0", "gpu_name": "NVIDIA L4"}
    key = ts.engine_cache_key(**base, calibration="c1", workspace=1 << 30, profiles={"x": [1, 2]})
    assert len(key) == 16
    assert int(key, 16) >= 0
    assert key == ts.engine_cache_key(**base, profiles={"x": [1, 2]}, workspace=1 << 30, calibration="c1")
    variants = [{**base, "onnx_sha256": "b" * 64}, {**base, "precision": "fp16"}, {**base, "trt_version": "10.10.0"},
                {**base, "gpu_name": "NVIDIA A100"}]
    keys = {ts.engine_cache_key(**v, calibration="c1", workspace=1 << 30, profiles={"x": [1, 2]}) for v in variants}
    keys |= {ts.engine_cache_key(**base, calibration="c2", workspace=1 << 30, profiles={"x": [1, 2]}),
             ts.engine_cache_key(**base, calibration="c1", workspace=1 << 29, profiles={"x": [1, 2]}),
             ts.engine_cache_key(**base, calibration="c1", workspace=1 << 30, profiles={"x": [1, 3]})}
    assert key not in keys
    assert len(keys) == 7


# --- engine inspector JSON -------------------------------------------------------------------------------------

# Layout of TensorRT 10's IEngineInspector.get_engine_information(LayerInformationFormat.JSON) with
# ProfilingVerbosity.DETAILED, as documented in the developer guide ("Engine Inspector", Engine Tools and
# Debugging): {"Layers": [{"Name", "LayerType", "Inputs"/"Outputs": [{"Name", "Dimensions", "Format/Datatype"}],
# "ParameterType", "Weights", "Bias", "TacticName", "TacticValue"}, ...], "Bindings": [...]}. The first
# convolution below is the guide's own example layer; format strings are TensorRT's ones (also listed by
# trt-engine-explorer's activations.py).
def _tensor(name: str, fmt: str, dims: list[int]) -> dict[str, object]:
    return {"Name": name, "Location": "Device", "Dimensions": dims, "Format/Datatype": fmt}


INSPECTOR_SAMPLE = {"Layers": [
    {"Name": "Reformatting CopyNode for Input Tensor 0 to conv1", "LayerType": "Reformat",
     "Inputs": [_tensor("input", "Row major linear FP32", [1, 3, 32, 32])],
     "Outputs": [_tensor("conv1_in", "Thirty-two wide channel vectorized row major Int8 format", [1, 3, 32, 32])],
     "ParameterType": "Reformat", "Origin": "REFORMAT", "TacticValue": "0x0000000000000000"},
    {"Name": "node_of_gpu_0/res4_0_branch2a_1 + node_of_gpu_0/res4_0_branch2a_bn_1 + "
             "node_of_gpu_0/res4_0_branch2a_bn_2",
     "LayerType": "CaskConvolution",
     "Inputs": [_tensor("gpu_0/res3_3_branch2c_bn_3", "Thirty-two wide channel vectorized row major Int8 format.",
                        [16, 512, 28, 28])],
     "Outputs": [_tensor("gpu_0/res4_0_branch2a_bn_2", "Thirty-two wide channel vectorized row major Int8 format.",
                         [16, 256, 28, 28])],
     "ParameterType": "Convolution", "Kernel": [1, 1], "PaddingMode": "kEXPLICIT_ROUND_DOWN", "PrePadding": [0, 0],
     "PostPadding": [0, 0], "Stride": [1, 1], "Dilation": [1, 1], "OutMaps": 256, "Groups": 1,
     "Weights": {"Type": "Int8", "Count": 131072}, "Bias": {"Type": "Float", "Count": 256}, "AllowSparse": 0,
     "Activation": "RELU", "HasBias": 1, "HasReLU": 1,
     "TacticName": "sm80_xmma_fprop_implicit_gemm_interleaved_i8i8_i8i32_f32_nchw_vect_c_32kcrs_vect_c_32",
     "TacticValue": "0x11bde0e1d9f2f35d"},
    {"Name": "/layer2/conv1/Conv + /layer2/relu/Relu", "LayerType": "CaskConvolution",
     "Inputs": [_tensor("a", "Channel major FP16 format where channel % 8 == 0", [1, 16, 8, 8])],
     "Outputs": [_tensor("b", "Channel major FP16 format where channel % 8 == 0", [1, 16, 8, 8])],
     "ParameterType": "Convolution", "Weights": {"Type": "Half", "Count": 2304}},
    {"Name": "/layer2/conv2/Conv", "LayerType": "CaskConvolution",
     "Inputs": [_tensor("b", "Channel major FP16 format where channel % 8 == 0", [1, 16, 8, 8])],
     "Outputs": [_tensor("c", "Channel major FP16 format where channel % 8 == 0", [1, 16, 8, 8])],
     "ParameterType": "Convolution", "Weights": {"Type": "Half", "Count": 2304}},
    {"Name": "/pool/GlobalAveragePool", "LayerType": "CaskPooling",
     "Inputs": [_tensor("c", "Channel major FP16 format where channel % 8 == 0", [1, 16, 8, 8])],
     "Outputs": [_tensor("d", "Row major linear FP32", [1, 16, 1, 1])], "ParameterType": "Pooling"},
    {"Name": "/fc/Gemm", "LayerType": "CaskGemmMatrixMultiply",
     "Inputs": [_tensor("d", "Row major linear FP32", [1, 16])],
     "Outputs": [_tensor("output", "Row major linear FP32", [1, 10])], "ParameterType": "MatrixMultiply"},
    {"Name": "shape_of_input", "LayerType": "Shape", "Inputs": [],
     "Outputs": [_tensor("shape", "Row major linear Int32", [4])], "ParameterType": "Shape"},
], "Bindings": ["input", "output"]}


def test_inspector_counts_compute_layers_by_input_type() -> None:
    counts = ts.inspector_dtype_counts(json.dumps(INSPECTOR_SAMPLE))
    assert counts == {"int8": 1, "fp16": 2, "fp32": 1}
    executed = summarize(counts)
    assert executed == "mixed(fp16 50%,int8 25%,fp32 25%)"
    assert compute_types(executed) == {"fp16", "int8", "fp32"}


def test_inspector_single_type_engine_is_plain() -> None:
    fp32 = {"Layers": [layer for layer in INSPECTOR_SAMPLE["Layers"] if layer["Name"] == "/fc/Gemm"] * 3}
    assert summarize(ts.inspector_dtype_counts(fp32)) == "fp32"


def test_inspector_without_compute_layers_counts_every_typed_layer() -> None:
    data = {"Layers": [layer for layer in INSPECTOR_SAMPLE["Layers"]
                       if layer["ParameterType"] in ("Reformat", "Pooling", "Shape")]}
    assert ts.inspector_dtype_counts(data) == {"fp32": 1, "fp16": 1}  # the Int32 shape layer is not arithmetic


def test_inspector_reads_split_datatype_and_myelin_layers() -> None:
    data = {"Layers": [{"Name": "{ForeignNode[/encoder/...]}", "LayerType": "Myelin",
                        "Inputs": [{"Name": "input", "Dimensions": [1, 8, 32], "Format": "kLINEAR",
                                    "DataType": "Half"}], "Outputs": []}]}
    assert ts.inspector_dtype_counts(data) == {"fp16": 1}


def test_inspector_names_only_is_an_actionable_error() -> None:
    names_only = {"Layers": ["conv1 + relu1", "fc"], "Bindings": ["input", "output"]}
    with pytest.raises(ValueError, match=r"ProfilingVerbosity\.DETAILED"):
        ts.inspector_dtype_counts(json.dumps(names_only))


def test_inspector_without_formats_is_unknown() -> None:
    # dynamic-shape engine inspected without an execution context: dims -1 and no format field
    data = {"Layers": [{"Name": "conv", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
                        "Inputs": [{"Name": "input", "Dimensions": [-1, 3, 32, 32]}], "Outputs": []}]}
    assert summarize(ts.inspector_dtype_counts(data)) == "unknown"


# --- explicit quantization artifact (runs here through onnxruntime on CPU) -------------------------------------


@pytest.fixture(scope="module")
def resnet_tiny(tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    from harness.model.export import ExportedModel
    from model_zoo import get_model

    return ExportedModel(get_model("resnet_tiny"), root=tmp_path_factory.mktemp("trt-cache"))


@needs_ort
def test_qdq_onnx_is_what_tensorrt_accepts_and_stays_accurate(resnet_tiny: ExportedModel, tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from harness.backends._ort_quant import static_qdq
    from harness.core.compare import compare
    from harness.model.inputs import calibration_set, input_sets
    from harness.model.reference import references

    spec = resnet_tiny.spec
    calibration = calibration_set(spec)
    qdq = tmp_path / "trt" / "model.onnx"
    qdq.parent.mkdir()
    ts.quantize_qdq(resnet_tiny.onnx_path, qdq, calibration)
    nodes = onnx.load(str(qdq)).graph.node
    assert sum(n.op_type == "QuantizeLinear" for n in nodes) >= 4
    assert ts.trt_qdq_violations(qdq) == []

    # ORT's CPU recipe (u8 asymmetric activations) is exactly what TensorRT's parser rejects
    ort_cpu = tmp_path / "ort" / "model.onnx"
    ort_cpu.parent.mkdir()
    static_qdq(resnet_tiny.onnx_path, ort_cpu, calibration)
    violations = ts.trt_qdq_violations(ort_cpu)
    assert violations
    assert any("uint8" in v for v in violations), violations

    sets = [s for s in input_sets(spec) if s.in_distribution]
    ref32, ref64 = references(resnet_tiny.module(), {s.name: s.feeds for s in sets}, resnet_tiny.input_names,
                              resnet_tiny.output_names)
    # Q/DQ executed literally (fake quantization, the semantics TensorRT implements with int32 accumulation):
    # ORT's fused s8s8 CPU kernels saturate on AVX2 without VNNI (cosine 0.908 here), which says nothing
    # about the artifact.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(qdq), options, providers=["CPUExecutionProvider"])
    for s in sets:
        out = dict(zip(resnet_tiny.output_names, session.run(None, dict(s.feeds)), strict=True))
        result = compare(ref32[s.name], out, spec.tolerance(Precision.INT8), fp64_ref=ref64[s.name])
        assert result, f"{s.name}: {result.reason}"


# --- the engine itself (needs tensorrt and a CUDA GPU) ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("precision", "int8_mode"), [
    (Precision.FP32, "qdq"), (Precision.FP16, "qdq"), (Precision.INT8, "qdq"), (Precision.INT8, "calibrator")])
def test_resnet_tiny_on_gpu(precision: Precision, int8_mode: str, monkeypatch: pytest.MonkeyPatch,
                            tmp_path: Path) -> None:
    from harness.backends.tensorrt import TrtBackend
    from harness.core.options import CaseRequest
    from harness.run.case import run_case

    reason = TrtBackend().unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    monkeypatch.setenv("HARNESS_TRT_INT8", int8_mode)
    record = run_case(CaseRequest("resnet_tiny", "trt", precision))
    assert record.status in ("pass", "fallback"), f"{record.status}: {record.reason}"
    assert record.executed_precision != "unknown"
    types = compute_types(record.executed_precision)
    if precision is Precision.FP32:
        assert record.status == "pass"
        assert record.executed_precision == "fp32"
    elif precision is Precision.INT8:
        assert record.status == "pass"
        assert "int8" in types, record.executed_precision
        assert record.settings["int8_mode"] == {"qdq": "explicit-qdq", "calibrator": "implicit-calibrator"}[int8_mode]
    assert record.settings["profiles"]["input"] == [[1, 3, 32, 32], [1, 3, 32, 32], [3, 3, 32, 32]]
    assert Path(record.artifact).exists()
    assert Path(record.settings["layer_info"]).exists()
