"""Catalog specs (torchvision:/timm:) and the zoo listing (describe / format_table)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

import pytest
import torch
from engines import needs_ort
from torch import nn

from harness.core.errors import UnknownNameError
from harness.core.options import CaseRequest
from harness.core.types import Precision
from harness.run.case import run_case
from model_zoo import catalog, get_model, listing
from model_zoo.registry import _MODELS, _UNAVAILABLE, ModelUnavailable


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))


def test_catalog_names_need_a_known_provider():
    with pytest.raises(UnknownNameError, match="expected PROVIDER:NAME with PROVIDER one of torchvision, timm"):
        get_model("keras:resnet50")
    with pytest.raises(UnknownNameError, match="PROVIDER:NAME"):
        catalog.parse("timm:")


@pytest.mark.parametrize("provider", catalog.PROVIDERS)
def test_missing_provider_is_a_skip_with_the_reason(provider):
    if importlib.util.find_spec(provider) is not None:
        pytest.skip(f"{provider} is installed here; this checks the absent-package path")
    with pytest.raises(ModelUnavailable, match=f"{provider}:resnet50: {provider} is not installed; catalog models"):
        get_model(f"{provider}:resnet50")
    record = run_case(CaseRequest(f"{provider}:resnet50", "ort", Precision.FP32))
    assert record.status == "skipped"
    assert "would replace torch with a CUDA build" in record.reason


class _TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))


@pytest.fixture
def fake_torchvision(monkeypatch):
    """A stand-in ``torchvision`` package exposing the three calls the resolver makes (the real one is not
    installable beside this CPU torch). Not an engine: it only supplies an nn.Module."""
    models = types.SimpleNamespace(
        list_models=lambda module=None: ["tinynet"],
        get_model_weights=lambda name: (_ for _ in ()).throw(ValueError("no weights")),
        get_model=lambda name, weights=None: _TinyClassifier(),
    )
    fake = types.ModuleType("torchvision")
    fake.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    fake.models = models
    models.__name__ = "torchvision.models"
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    yield fake
    for name in [n for n in _MODELS if n.startswith("torchvision:")]:
        del _MODELS[name]


@needs_ort
def test_resolver_builds_a_runnable_spec_with_random_weights(fake_torchvision):
    spec = get_model("torchvision:tinynet")
    assert spec.inputs[0].shape == ("batch", 3, 224, 224)
    assert {"torchvision", "catalog"} <= spec.tags
    assert "seeded random weights" in spec.description
    with pytest.raises(UnknownNameError, match="not a torchvision classification model; did you mean tinynet"):
        get_model("torchvision:tinynett")
    record = run_case(CaseRequest("torchvision:tinynet", "ort", Precision.FP32))
    assert record.status == "pass", record.reason


def test_resolver_loads_local_weights_when_present(fake_torchvision, tmp_path, monkeypatch):
    monkeypatch.setenv(catalog.WEIGHTS_ENV, str(tmp_path / "weights"))
    trained = _TinyClassifier()
    with torch.no_grad():
        trained.fc.bias.fill_(7.0)
    (tmp_path / "weights" / "torchvision").mkdir(parents=True)
    torch.save(trained.state_dict(), tmp_path / "weights" / "torchvision" / "tinynet.pth")
    spec = catalog.resolve("torchvision:tinynet")
    assert "tinynet.pth" in spec.description
    assert torch.equal(spec.build().fc.bias, torch.full((5,), 7.0))


def test_describe_counts_parameters_and_flops():
    rows = {r["name"]: r for r in listing.describe(["loop_traced", "warp_tiny"])}
    loop = rows["loop_traced"]
    assert loop["params"] == 16 * 16 + 16
    assert loop["flops"] == 4 * 2 * 2 * 16 * 16  # 4 steps of a 2x16 @ 16x16 matmul, 2 FLOPs per multiply-add
    assert loop["inputs"] == "input[batch=2|5,16] float32"
    warp = rows["warp_tiny"]
    assert warp["params"] == (3 * 8 * 9 + 8) + (8 * 2 * 9 + 2)
    assert warp["flops"] == 2 * 16 * 16 * (3 * 8 * 9 + 8 * 2 * 9)  # the two convolutions (grid_sample: uncounted)
    assert warp["opset"] == 16


def test_format_table_lists_unavailable_models_with_their_reason(monkeypatch):
    monkeypatch.setitem(_UNAVAILABLE, "absent_model", "absent_model: pip install something (extra 'zoo')")
    rows = listing.describe(["loop_traced", "absent_model"])
    table = listing.format_table(rows).splitlines()
    assert table[0].split() == ["model", "params", "FLOPs", "inputs", "tags"]
    assert table[1].split()[:3] == ["loop_traced", "272", "4.10k"]
    assert table[2].startswith("absent_model")
    assert table[2].endswith("unavailable: absent_model: pip install something (extra 'zoo')")
