"""Prefetch: cases queued in the child ahead of their request give the records an unprefetched run gives,
a request that differs from the queued one runs anew, a crash or hang of a queued case is charged to that
case and the ones behind it run again in a fresh child, and a queued case's time limit counts from its start.

Real engines: ONNX Runtime on ONNX's own test cases, PyTorch and the fault-injecting ``_fault_*`` backends
(harness/backends/_fault.py) on zoo models. This file is also a zoo file (``sleepy``, a model whose
forward takes ``SLEEPY_S`` seconds), loaded by the child through ``zoo_files``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from engines import needs_ort
from torch import nn

from harness.core.options import CaseRequest
from harness.core.types import Precision, TensorSpec
from harness.exec.supervisor import PREFETCH_ENV, run_in_subprocess
from model_zoo import register_model

THIS_FILE = str(Path(__file__).resolve())
ONNX_CASES = ("node-test_abs", "node-test_add", "node-test_resize_downsample_scales_cubic_align_corners",
              "node-test_cast_FLOAT_to_FLOAT4E2M1", "node-test_training_dropout", "node-test_relu",
              "node-test_sigmoid")
"""pass, pass, mismatch, unsupported, skipped, pass, pass on ONNX Runtime."""
VOLATILE = ("started_at", "duration_s", "timings_s", "peak_rss_mb")


class Sleepy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(float(os.environ.get("SLEEPY_S", "0")))
        return self.lin(x)


@register_model(inputs=[TensorSpec("x", (1, 4))], tags={"fault"})
def sleepy() -> nn.Module:
    """A linear layer whose forward first sleeps ``SLEEPY_S`` seconds (test-only, tag 'fault')."""
    return Sleepy()


@pytest.fixture(autouse=True)
def _env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path_factory.getbasetemp() / "prefetch-cache"))
    monkeypatch.setenv("HARNESS_FAULT", "segv@run")


def _stable(record) -> dict:
    """A record without what differs between two runs of the same case (times, memory, the worker's facts)."""
    d = json.loads(record.to_json())
    for key in VOLATILE:
        d.pop(key, None)
    d["extra"] = {k: v for k, v in d["extra"].items() if k not in ("worker", "memory")}
    return d


def _run_all(cases: list[CaseRequest], timeout_s: float = 300) -> list:
    return [run_in_subprocess(c, timeout_s=timeout_s, upcoming=cases[i + 1:]) for i, c in enumerate(cases)]


@needs_ort
def test_prefetched_cases_give_the_records_of_an_unprefetched_run(monkeypatch):
    cases = [CaseRequest(f"onnx:{c}", "ort", Precision.FP32, run_id="pf", suite="onnx_conformance",
                         test_id=f"{c}-ort") for c in ONNX_CASES]
    monkeypatch.setenv(PREFETCH_ENV, "0")
    plain = _run_all(cases)
    monkeypatch.setenv(PREFETCH_ENV, "4")
    ahead = _run_all(cases)
    assert [r.status for r in plain] == ["pass", "pass", "mismatch", "unsupported", "skipped", "pass", "pass"]
    assert [_stable(r) for r in ahead] == [_stable(r) for r in plain]
    assert not any(r.extra["worker"].get("prefetched") for r in plain)
    assert [bool(r.extra["worker"].get("prefetched")) for r in ahead] == [False] + [True] * (len(cases) - 1)
    assert len({r.extra["worker"]["pid"] for r in ahead}) == 1
    assert [r.extra["worker"]["case_index"] for r in ahead] == list(range(len(cases)))


@needs_ort
def test_a_request_that_differs_from_the_prefetched_one_runs_again():
    abs_case = CaseRequest("onnx:node-test_abs", "ort", Precision.FP32, run_id="a", test_id="abs")
    first = CaseRequest("onnx:node-test_relu", "ort", Precision.FP32, run_id="a", test_id="relu")
    before = run_in_subprocess(first, timeout_s=300, upcoming=[abs_case])
    other = replace(abs_case, run_id="b")  # what the next test asks differs from what was announced
    after = run_in_subprocess(other, timeout_s=300)
    assert before.status == after.status == "pass"
    assert after.run_id == "b"
    assert "prefetched" not in after.extra["worker"]
    assert after.extra["worker"]["pid"] == before.extra["worker"]["pid"]  # same child: the stale one was dropped
    assert after.extra["worker"]["case_index"] == before.extra["worker"]["case_index"] + 2


def test_a_crash_in_a_prefetched_case_is_its_own_and_the_cases_behind_it_run_again():
    good = CaseRequest("resnet_tiny", "torch", Precision.FP32, test_id="good-0")
    crash = CaseRequest("resnet_tiny", "_fault_crash", Precision.FP32, test_id="crash")
    later = [replace(good, test_id=f"good-{i}") for i in (1, 2)]
    cases = [good, crash, *later]
    records = _run_all(cases)
    assert [r.status for r in records] == ["pass", "crash", "pass", "pass"]
    first, crashed, after = records[0], records[1], records[2:]
    assert crashed.test_id == "crash"
    assert crashed.backend == "_fault_crash"
    assert crashed.extra["signal"] == "SIGSEGV"
    assert "crash_now" in crashed.reason  # the stack in the child's output is the crashing case's
    assert crashed.extra["worker"]["prefetched"] is True
    assert crashed.extra["worker"]["case_index"] == first.extra["worker"]["case_index"] + 1  # in the same child
    assert [r.test_id for r in after] == ["good-1", "good-2"]
    assert after[0].extra["worker"]["pid"] != first.extra["worker"]["pid"]  # a fresh child ran them
    assert after[0].extra["worker"]["case_index"] == 0
    assert "prefetched" not in after[0].extra["worker"]
    assert after[1].extra["worker"]["prefetched"] is True


def test_a_prefetched_case_times_out_counted_from_its_start(monkeypatch):
    """The slow case runs for ~2 s while the hanging one waits behind it; then the parent dawdles 3 s before
    asking for the hanging one. Its limit counts from when it started: neither from when it was queued (it
    would be killed ~2 s early) nor from when it was asked for (3 s late)."""
    timeout_s = 8.0
    monkeypatch.setenv("SLEEPY_S", "0.1")
    slow = CaseRequest("sleepy", "torch", Precision.FP32, zoo_files=(THIS_FILE,), test_id="slow")
    hang = CaseRequest("resnet_tiny", "_fault_hang", Precision.FP32, test_id="hang")
    good = CaseRequest("resnet_tiny", "torch", Precision.FP32, test_id="good")
    first = run_in_subprocess(slow, timeout_s=timeout_s, upcoming=[hang, good])
    assert first.status == "pass", first.reason
    assert first.duration_s >= 1.5, "the case ahead was too quick: this test would prove nothing"
    time.sleep(3.0)
    hung = run_in_subprocess(hang, timeout_s=timeout_s, upcoming=[good])
    assert hung.status == "timeout"
    assert hung.test_id == "hang"
    assert f"time limit of {timeout_s:g} s" in hung.reason
    assert "HangSession" in hung.reason or "after_run" in hung.reason  # the dumped stack is the hanging case's
    assert timeout_s <= hung.extra["worker"]["case_s"] < timeout_s + 2.5
    assert hung.extra["worker"]["prefetched"] is True
    last = run_in_subprocess(good, timeout_s=timeout_s)
    assert last.status == "pass"
    assert last.extra["worker"]["pid"] != first.extra["worker"]["pid"]
