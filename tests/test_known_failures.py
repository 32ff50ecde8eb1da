"""Known failures live with the model and cannot rot: active -> xfail, passing -> xpass (a failure), expired -> normal.

The tiny models are defined here and handed to a real conformance run on ORT as a --zoo-file (so they
never join this process's registry): one whose ONNX export really differs from PyTorch (``.item()``
on an input is frozen by tracing) and one that really passes, each under several known-failure entries.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from harness.core.types import Precision
from harness.results import read_records
from model_zoo import KnownFailure

ROOT = Path(__file__).resolve().parents[1]
LINK = "https://example.invalid/issues/42"


def child_env(**extra: str) -> dict[str, str]:
    """This environment minus PYTEST_* (an outer xdist worker's PYTEST_XDIST_WORKER must not leak into the child)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}, **extra}


KF_ZOO = f'''
from __future__ import annotations

from datetime import date

from torch import nn

from model_zoo import KnownFailure, TensorSpec, register_model


class FrozenItem(nn.Module):
    """Scales by the first input value: .item() becomes a constant in the traced ONNX graph."""

    def forward(self, x):
        return x * x.flatten()[0].item()


class Affine(nn.Module):
    def forward(self, x):
        return x * 2.0 + 1.0


INPUTS = [TensorSpec("input", (1, 16))]
TAGS = {{"kf-test"}}
ACTIVE = KnownFailure("item() frozen by tracing", link="{LINK}", expires=date(2999, 1, 1))


@register_model(inputs=INPUTS, tags=TAGS, known_failures={{"ort:fp32": ACTIVE}})
def kf_mismatch_active() -> nn.Module:
    return FrozenItem()


@register_model(inputs=INPUTS, tags=TAGS,
                known_failures={{"ort": KnownFailure("engine bug", until_version="999.0")}})
def kf_mismatch_until_future_version() -> nn.Module:
    return FrozenItem()


@register_model(inputs=INPUTS, tags=TAGS,
                known_failures={{"ort:fp32": KnownFailure("item() frozen", link="{LINK}", expires=date(2000, 1, 1))}})
def kf_mismatch_expired() -> nn.Module:
    return FrozenItem()


@register_model(inputs=INPUTS, tags=TAGS, known_failures={{"*:fp32": ACTIVE}})
def kf_passes_active() -> nn.Module:
    return Affine()


@register_model(inputs=INPUTS, tags=TAGS,
                known_failures={{"ort:fp32": KnownFailure("fixed in ORT 1.0", until_version="1.0")}})
def kf_passes_until_old_version() -> nn.Module:
    return Affine()
'''


@pytest.fixture(scope="module")
def kf_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime not installed (pip install -e '.[ort]')")
    tmp = tmp_path_factory.mktemp("known-failures")
    zoo = tmp / "kf_zoo.py"
    zoo.write_text(KF_ZOO)
    results = tmp / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "suites/test_conformance.py", "-p", "no:cacheprovider", "-rA",
         "--zoo-file", str(zoo), "--tag", "kf-test", "--backend", "ort", "--precision", "fp32", "--in-process",
         "--no-report", "--results-dir", str(results)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=child_env())
    runs = list(results.iterdir()) if results.exists() else []
    assert len(runs) == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"proc": proc, "out": proc.stdout, "records": {r.model: r for r in read_records(runs[0])}}


def outcome(out: str, model: str) -> str:
    """pytest's -rA summary word (PASSED, FAILED, XFAIL, ...) for the model's ort-fp32 case."""
    node = f"suites/test_conformance.py::test_conformance[{model}-ort-fp32]"
    words = {line.split()[0] for line in out.splitlines() if line.split()[1:2] == [node]}
    assert len(words) == 1, f"{node}: {words}"
    return words.pop()


def test_the_frozen_item_model_really_mismatches(kf_run):
    """Without an active entry the model fails for real: the known failure below is not vacuous."""
    rec = kf_run["records"]["kf_mismatch_expired"]
    assert rec.status == "mismatch", (rec.status, rec.reason)
    assert rec.known_failure is None, "an expired entry must not be attached"
    assert outcome(kf_run["out"], "kf_mismatch_expired") == "FAILED"


@pytest.mark.parametrize("model", ["kf_mismatch_active", "kf_mismatch_until_future_version"])
def test_active_known_failure_is_xfail_with_reason_and_link(kf_run, model):
    rec = kf_run["records"][model]
    assert rec.status == "xfail", (rec.status, rec.reason)
    assert rec.known_failure is not None
    assert "observed: " in rec.reason, rec.reason
    assert "outside" in rec.reason, rec.reason
    assert outcome(kf_run["out"], model) == "XFAIL"
    if model == "kf_mismatch_active":
        assert rec.known_failure == {"reason": "item() frozen by tracing", "link": LINK}
        assert LINK in rec.reason


def test_known_failure_that_passes_is_xpass_and_fails_the_run(kf_run):
    rec = kf_run["records"]["kf_passes_active"]
    assert rec.status == "xpass", (rec.status, rec.reason)
    assert outcome(kf_run["out"], "kf_passes_active") == "FAILED"
    assert "remove or update the entry" in kf_run["out"]
    assert kf_run["proc"].returncode == pytest.ExitCode.TESTS_FAILED


def test_entry_fixed_in_an_older_engine_version_is_ignored(kf_run):
    rec = kf_run["records"]["kf_passes_until_old_version"]
    assert (rec.status, rec.known_failure) == ("pass", None), (rec.status, rec.reason)
    assert outcome(kf_run["out"], "kf_passes_until_old_version") == "PASSED"


def test_summary_lists_the_xpass_as_an_entry_to_update(kf_run):
    """xpass is passing in the one status table (the outputs matched) and the summary calls it out."""
    out = kf_run["out"]
    title = "known-failure entries whose case passed (update them):"
    section = out[out.index(title):] if title in out else ""
    assert "kf_passes_active-ort-fp32: known failure" in section, out[-3000:]


@pytest.mark.parametrize(("failure", "version", "today", "active"), [
    (KnownFailure("r"), "", date(2030, 1, 1), True),
    (KnownFailure("r", expires=date(2030, 1, 1)), "", date(2030, 1, 1), True),  # the expiry day itself counts
    (KnownFailure("r", expires=date(2030, 1, 1)), "", date(2030, 1, 2), False),
    (KnownFailure("r", until_version="2.0"), "1.31.1", date(2030, 1, 1), True),
    (KnownFailure("r", until_version="2.0"), "2.0.0", date(2030, 1, 1), False),
    (KnownFailure("r", until_version="2.0"), "2.1.0+cu121", date(2030, 1, 1), False),
    (KnownFailure("r", until_version="2026.4"), "2026.4.1-18374-abc", date(2030, 1, 1), False),
])
def test_known_failure_expiry(failure, version, today, active):
    assert failure.active(version, today=today) is active


def test_known_failure_patterns_match_backend_and_precision():
    from harness.core.spec import ModelSpec

    spec = ModelSpec(name="x", factory=object, inputs=(), known_failures={
        "ort:int8": KnownFailure("a"), "ov": KnownFailure("b"), "*:fp16": KnownFailure("c")})
    assert spec.known_failure("ort", Precision.INT8).reason == "a"
    assert spec.known_failure("ort", Precision.FP32) is None
    assert spec.known_failure("ov", Precision.FP32).reason == "b"
    assert spec.known_failure("ncnn", Precision.FP16).reason == "c"
