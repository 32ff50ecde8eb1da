"""The main job records speed: every passing conformance case carries a quick latency, per-phase seconds and
its peak memory; run.json sums the phases; ``--no-measure`` gives verdicts only; a failure to measure keeps
the verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from engines import needs_ort

from harness.core.options import CaseRequest, MeasureOptions
from harness.core.record import Record
from harness.core.types import Precision
from harness.results import read_records
from harness.run.case import PHASES, phase_totals, run_case

ROOT = Path(__file__).resolve().parent.parent


def _conformance(tmp_path: Path, run_id: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pytest", "suites/test_conformance.py", "-p", "no:cacheprovider", "-q",
           "--model", "resnet_tiny", "--backend", "ort", "--precision", "fp32", "--precision", "int8",
           "--results-dir", str(tmp_path), "--run-id", run_id, "--no-report", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # an outer xdist worker's id
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@needs_ort
def test_conformance_cases_record_quick_latency_phases_and_memory(tmp_path):
    proc = _conformance(tmp_path, "quick")
    assert proc.returncode == 0, proc.stdout[-3000:]
    records = read_records(tmp_path / "quick")
    assert [(r.precision, r.status) for r in records] == [("fp32", "pass"), ("int8", "pass")]
    for r in records:
        lat = r.latency
        assert lat is not None, r.extra.get("measure_error")
        assert lat["isolated"] is False  # measured in the shared conformance child, right after the verdict
        assert len(lat["trials_p50_ms"]) == 3
        assert lat["n"] >= 15
        assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
        assert lat["timed"].startswith("OrtSession.bind")
        assert r.throughput == []  # no sweep: that is the perf suite's
        assert {"reference", "export", "build", "compare", "measure"} <= set(r.timings_s)
        assert r.timings_s["measure"] < 10.0  # quick: a fraction of a second on an idle machine
        assert r.peak_rss_mb is not None
    assert records[1].extra["roofline"]["peak_precision"] == "int8"
    phases = json.loads((tmp_path / "quick" / "run.json").read_text())["phases_s"]
    assert phases["total"]["cases"] == 2
    assert phases["by_backend"]["ort"]["measure"] == pytest.approx(sum(r.timings_s["measure"] for r in records),
                                                                   abs=0.01)
    assert phases["total"]["process_start"] > 0  # the supervisor's share: spawning and importing the child


@needs_ort
def test_no_measure_gives_verdicts_only(tmp_path):
    proc = _conformance(tmp_path, "bare", "--no-measure")
    assert proc.returncode == 0, proc.stdout[-3000:]
    records = read_records(tmp_path / "bare")
    assert [r.status for r in records] == ["pass", "pass"]
    assert all(r.latency is None and "measure" not in r.timings_s for r in records)


def test_a_failure_to_bind_keeps_the_verdict_and_says_why(monkeypatch):
    monkeypatch.setenv("HARNESS_FAULT", "raise@bind")
    record = run_case(CaseRequest("resnet_tiny", "_fault_alloc", Precision.FP32, measure=MeasureOptions.quick()))
    assert record.status == "pass"
    assert record.latency is None
    assert "raise@bind" in record.extra["measure_error"]
    assert "measure" in record.timings_s
    monkeypatch.delenv("HARNESS_FAULT")
    again = run_case(CaseRequest("resnet_tiny", "_fault_alloc", Precision.FP32, measure=MeasureOptions.quick()))
    assert again.latency is not None
    assert again.latency["timed"].startswith("_TorchSession.bind")
    assert "measure_error" not in again.extra


def test_phase_totals_sum_by_suite_and_backend():
    def rec(suite: str, backend: str, **timings: float) -> Record:
        return Record(run_id="r", model="m", backend=backend, precision="fp32", status="pass", suite=suite,
                      timings_s=timings, duration_s=sum(timings.values()) + 0.5, extra={"worker": {"overhead_s": 2.0}})

    records = [rec("conformance", "ort", reference=1.0, build=2.0, measure=0.3),
               rec("conformance", "ov", reference=1.0, build=4.0), rec("perf", "ort", measure=3.0)]
    totals = phase_totals(records)
    assert totals["total"] == {"reference": 2.0, "build": 6.0, "measure": 3.3, "process_start": 6.0, "other": 1.5,
                               "cases": 3}
    assert totals["by_backend"]["ort"]["measure"] == 3.3
    assert totals["by_suite"]["perf"] == {"measure": 3.0, "process_start": 2.0, "other": 0.5, "cases": 1}
    assert set(PHASES) >= {"reference", "export", "build", "compare", "measure"}
