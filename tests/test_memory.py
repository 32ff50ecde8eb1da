"""harness.run.memory: the kernel's RSS high-water mark, reset and read in-process and in a case's child process."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from harness.core.options import CaseRequest
from harness.core.types import Precision
from harness.exec.supervisor import run_in_subprocess
from harness.run import memory

linux_only = pytest.mark.skipif(not memory.reset_peak(), reason="needs /proc/self/clear_refs (Linux)")
ALLOC_MB = 200


@linux_only
def test_short_peak_is_seen_after_the_array_is_freed():
    tracker = memory.PeakRss().start()
    before = memory.current_rss_mb()
    a = np.ones(ALLOC_MB * 2**20 // 8)  # ones: every page touched
    del a
    usage = tracker.stop()
    assert memory.current_rss_mb() < before + 50  # freed: an RSS delta would miss it...
    assert usage.delta_mb >= 0.9 * ALLOC_MB  # ...the high-water mark does not
    assert usage.method == "VmHWM after clear_refs"


@linux_only
def test_reset_forgets_an_earlier_peak():
    a = np.ones(ALLOC_MB * 2**20 // 8)
    del a
    assert memory.peak_rss_mb() >= memory.current_rss_mb() + 0.9 * ALLOC_MB
    assert memory.reset_peak()
    assert memory.peak_rss_mb() < memory.current_rss_mb() + 20


def test_usage_arithmetic_and_dict():
    u = memory.MemoryUsage(baseline_mb=100.04, peak_mb=350.0, method="m")
    assert u.delta_mb == 250.0
    assert u.as_dict() == {"baseline_mb": 100.0, "peak_mb": 350.0, "delta_mb": 250.0, "method": "m"}
    assert memory.MemoryUsage(10.0, 5.0, "m").delta_mb == 0.0


SMALL_PARENT = """
import os, subprocess, sys
from harness.run import memory
baseline = memory.idle_child_baseline_mb(imports=("numpy",))
code = "import numpy as np; from harness.run import memory; memory.reset_peak(); b = memory.current_rss_mb(); " \\
       "a = np.ones(%d * 2**20 // 8); del a; print(memory.peak_rss_mb() - b)"
proc = subprocess.Popen([sys.executable, "-c", code % int(sys.argv[1])], stdout=subprocess.PIPE, text=True)
_, status, rusage = os.wait4(proc.pid, 0)
print(memory.child_peak_mb(rusage) - baseline, proc.stdout.read().strip())
"""


@linux_only
def test_wait4_and_high_water_mark_agree_from_a_small_parent():
    """The two child-process methods: ru_maxrss minus an idle child's, and VmHWM after clear_refs.
    (From a large parent, ru_maxrss starts at the parent's own high-water mark: the worker records both.)"""
    out = subprocess.run([sys.executable, "-c", SMALL_PARENT, str(ALLOC_MB)], capture_output=True, text=True,
                         check=True).stdout.split()
    wait4_mb, hwm_mb = float(out[0]), float(out[1])
    assert hwm_mb >= 0.9 * ALLOC_MB
    assert wait4_mb == pytest.approx(hwm_mb, abs=5.0)


@pytest.fixture
def fresh_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path_factory.getbasetemp() / "mem-cache"))


@linux_only
@pytest.mark.usefixtures("fresh_cache")
def test_a_200mb_engine_allocation_shows_in_the_case_record(monkeypatch):
    """``_fault_alloc`` holds 200 MB from load on: the child's peak above its idle baseline must show it,
    and the parent's ru_maxrss cross-check must agree with the child's own high-water mark."""
    req = CaseRequest("resnet_tiny", "_fault_alloc", Precision.FP32)
    monkeypatch.setenv("HARNESS_WORKER_CASES", "1")  # a child per case: ru_maxrss comes when it exits
    memory.reset_peak()  # the children's ru_maxrss starts at this process's high-water mark
    monkeypatch.setenv("HARNESS_FAULT_ALLOC_MB", "0")
    control = run_in_subprocess(req, timeout_s=300)
    monkeypatch.setenv("HARNESS_FAULT_ALLOC_MB", str(ALLOC_MB))
    heavy = run_in_subprocess(req, timeout_s=300)
    assert (control.status, heavy.status) == ("pass", "pass"), (control.reason, heavy.reason)
    assert heavy.peak_rss_mb >= 0.9 * ALLOC_MB
    assert control.peak_rss_mb < 0.9 * ALLOC_MB  # the case without the allocation stays below: the test can fail
    assert heavy.peak_rss_mb - control.peak_rss_mb == pytest.approx(ALLOC_MB, abs=25)
    child = heavy.extra["memory"]["child"]
    assert child["method"] == "VmHWM after clear_refs"
    # ru_maxrss of an exec'd child starts at the parent's own high-water mark (under xdist a big worker), so it is
    # only a lower-bounded cross-check: it can never be below the child's own VmHWM
    assert heavy.extra["worker"]["ru_maxrss_mb"] >= child["peak_mb"] - 2.0
