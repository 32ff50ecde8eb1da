"""Model and backend registries."""

from __future__ import annotations

import re

import pytest

from harness import backends
from harness.core.errors import HarnessError, UnknownNameError
from harness.core.types import Precision, TensorSpec
from model_zoo import KnownFailure, get_model, list_models, register_model
from model_zoo.registry import _MODELS


def test_wildcards_and_tags():
    assert "resnet18" in list_models("resnet*")
    assert all(n.startswith("resnet") for n in list_models("resnet*"))
    ci = list_models("*", tags=["ci"])
    assert "resnet_tiny" in ci
    assert "resnet18" not in ci
    assert list_models(["srcnn", "lstm"]) == ["lstm", "srcnn"]


def test_unknown_model_lists_close_and_known_names():
    with pytest.raises(UnknownNameError, match=r"unknown model 'resnet19'; did you mean resnet18.*Known models:"):
        get_model("resnet19")


def test_duplicate_model_name_is_rejected_naming_both_places():
    def make():
        @register_model(inputs=[TensorSpec("x", (1, 2))], name="resnet18")
        def other():  # pragma: no cover - never built
            raise AssertionError

    with pytest.raises(HarnessError, match=r"duplicate model name 'resnet18': defined at .*test_registry.py:\d+ "
                                           r"and already at .*vision.py:\d+"):
        make()


def test_symbolic_axes_need_sizes():
    with pytest.raises(HarnessError, match="symbolic axes \\['n'\\] need dynamic_sizes"):
        @register_model(inputs=[TensorSpec("x", ("n", 2))], name="needs_sizes")
        def f():  # pragma: no cover
            raise AssertionError
    assert "needs_sizes" not in _MODELS


def test_seeded_weights_are_reproducible():
    import torch

    a, b = get_model("resnet_tiny").build(), get_model("resnet_tiny").build()
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), ka
    assert not a.training


def test_known_failure_matching_and_expiry():
    from datetime import date

    spec = get_model("resnet_tiny")
    spec = type(spec)(**{**spec.__dict__, "known_failures": {"ov:int8": KnownFailure("x"), "ncnn": KnownFailure("y")}})
    assert spec.known_failure("ov", Precision.INT8).reason == "x"
    assert spec.known_failure("ov", Precision.FP32) is None
    assert spec.known_failure("ncnn", Precision.FP16).reason == "y"
    assert not KnownFailure("old", expires=date(2020, 1, 1)).active()
    assert KnownFailure("v", until_version="2.0").active("1.9.1")
    assert not KnownFailure("v", until_version="2.0").active("2.0.0")


def test_backend_aliases_and_unknown_names():
    assert backends.canonical("onnxruntime") == "ort"
    assert backends.canonical("OpenVINO") == "ov"
    assert backends.canonical("tensorrt") == "trt"
    with pytest.raises(UnknownNameError, match=r"unknown backend 'tflite'; known backends: torch, ncnn, ort"):
        backends.canonical("tflite")


def test_hidden_backends_never_join_a_sweep():
    assert all(not n.startswith("_") for n in backends.names())


def test_every_backend_declares_its_contract():
    for name in backends.names(include_hidden=True):
        cls = backends.get(name)
        assert cls.precisions <= set(Precision)
        reason = cls().unavailable_reason()
        assert reason is None or reason.startswith(f"{name}:"), reason


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"inputs": [TensorSpec("x", (1, 4), dtype="float99")]},
     "input 'x': dtype 'float99' is not a numpy dtype; use e.g. float32"),
    ({"inputs": [TensorSpec("x", (1, 4), dtype="complex64")]}, "input 'x': dtype 'complex64' is not a bool, integer"),
    ({"inputs": [TensorSpec("x", (1, -4))]}, "input 'x': dimension 1 is -4; a dimension is an integer >= 1"),
    ({"inputs": [TensorSpec("x", (0, 4))]}, "input 'x': dimension 0 is 0"),
    ({"inputs": [TensorSpec("x", [1, 4])]}, "input 'x': shape [1, 4] must be a tuple"),
    ({"inputs": [TensorSpec("x", ("batch", 4))], "dynamic_sizes": {"batch": ()}},
     "dynamic_sizes['batch'] is empty: give at least the export size"),
    ({"inputs": [TensorSpec("x", ("batch", 4))], "dynamic_sizes": {"batch": 4}},
     "dynamic_sizes['batch'] = 4: give a tuple of sizes, e.g. (1, 4)"),
    ({"inputs": [TensorSpec("x", ("batch", 4))], "dynamic_sizes": {"batch": (1, 0)}},
     "dynamic_sizes['batch'] = (1, 0): sizes must be integers >= 1"),
    ({"inputs": [TensorSpec("x", ("batch", 4))], "dynamic_sizes": {"batch": (1,), "btach": (2,)}},
     "dynamic_sizes names axis 'btach', which no input uses"),
    ({"inputs": [TensorSpec("x", (1, 4)), TensorSpec("x", (1, 4))]}, "input name 'x' is used twice"),
    ({"inputs": [TensorSpec("ids", (1, 4), "int64", low=5, high=5)]}, "input 'ids': low=5 must be below high=5"),
    ({"inputs": [TensorSpec("x", (1, 4))], "outputs": ("a", "a")}, "output name 'a' is used twice"),
    ({"inputs": [TensorSpec("x", (1, 4))], "exporter": "onnxscript"}, "exporter 'onnxscript' is unknown"),
    ({"inputs": [TensorSpec("x", (1, 4))], "tolerances": {"fp8": None}}, "unknown precision 'fp8'"),
])
def test_bad_declarations_fail_at_registration_naming_file_and_line(kwargs, message):
    from harness.core.errors import ModelSpecError

    def make():
        @register_model(name="bad_declaration", **kwargs)
        def bad():  # pragma: no cover - never built
            raise AssertionError
        return bad

    line = make.__code__.co_firstlineno + 1
    where = rf"model 'bad_declaration' \(.*test_registry.py:{line}\): "
    with pytest.raises(ModelSpecError, match=where + ".*" + re.escape(message)):
        make()
    assert "bad_declaration" not in _MODELS


def test_a_bad_declaration_in_a_zoo_file_names_that_file_and_line(tmp_path):
    from harness.core.errors import ModelSpecError
    from model_zoo import load_zoo_file

    zoo = tmp_path / "bad_zoo.py"
    zoo.write_text("from model_zoo import TensorSpec, register_model\n\n\n"
                   "@register_model(inputs=[TensorSpec('x', (1, 4), dtype='float99')])\n"
                   "def bad_zoo_model():\n    raise AssertionError\n")
    with pytest.raises(ModelSpecError, match=rf"--zoo-file {zoo}: model 'bad_zoo_model' \({zoo}:4\): input 'x': "
                                             "dtype 'float99' is not a numpy dtype"):
        load_zoo_file(zoo)
    assert "bad_zoo_model" not in _MODELS


def test_a_raising_factory_is_the_models_error_naming_file_and_line():
    from harness.core.errors import ModelSpecError

    @register_model(inputs=[TensorSpec("x", (1, 4))], name="raising_factory", tags={"test-only"})
    def raising_factory():
        raise RuntimeError("no weights here")

    with pytest.raises(ModelSpecError, match=r"model 'raising_factory' \(.*test_registry.py:\d+\): its factory raised "
                                             "RuntimeError: no weights here"):
        get_model("raising_factory").build()
    assert ModelSpecError("x").cause.value == "model"


def test_the_builtin_zoo_declarations_are_valid():
    """Every built-in model (not the ones other tests register in this process, e.g. ONNX cases)."""
    builtin = [n for n in list_models() if not n.startswith("onnx:") and "/tests/" not in get_model(n).source]
    assert builtin
    assert {n: get_model(n).problems() for n in builtin if get_model(n).problems()} == {}
