"""Model and backend registries."""

from __future__ import annotations

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
    assert "resnet_tiny" in ci and "resnet18" not in ci
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
