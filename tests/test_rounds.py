"""Perf trials in rounds: each trial in its own process, a case's trials a round apart, one record per case."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from engines import needs_ort

from harness.cli import main
from harness.core.options import CaseRequest, MeasureOptions
from harness.core.record import Record
from harness.core.types import Precision
from harness.exec.rounds import merge_rounds, round_options, run_rounds

MEASURE = MeasureOptions.standard()


def _record(case: CaseRequest, p50: float, *, status: str = "pass", pid: int = 1, reason: str = "") -> Record:
    samples = [p50 * f for f in (0.9, 0.95, 1.0, 1.0, 1.05, 1.1, 3.0)]  # one interrupt spike
    lat = {"p50_ms": p50, "p90_ms": p50 * 1.1, "p99_ms": p50 * 3, "mean_ms": p50, "cv": 0.6, "n": 300,
           "elapsed_s": 0.3, "samples_ms": samples, "unstable": True, "trials_p50_ms": [p50], "min_ms": p50 * 0.9,
           "load_1m": 0.5, "threads": 2, "batch": 1}
    return Record(run_id="r", model=case.model, backend=case.backend, precision=case.precision.value, status=status,
                  suite="perf", reason=reason, latency=lat if status == "pass" else None, peak_rss_mb=100.0 + pid,
                  throughput=[{"batch": 1, "mode": "sync", "items_per_s": 1000 / p50, "p50_ms": p50}],
                  extra={"worker": {"pid": pid}, "roofline": {"gflops": 1.0, "achieved_gflop_s": 1.0 / p50 * 1e3,
                                                              "peak_gflop_s": 100.0}},
                  timings_s={"measure": 0.3, "build": 1.0}, duration_s=2.0)


CASES = [CaseRequest(m, "ort", Precision.FP32, suite="perf", measure=MEASURE) for m in ("a", "b", "broken")]


def test_round_options_split_the_totals_into_one_trial():
    opts = round_options(MeasureOptions.bench())
    assert (opts.trials, opts.min_time_s, opts.min_iterations, opts.max_samples) == (1, 1.0, 10, 1000)
    assert (opts.isolated, opts.warmup) == (True, 10)  # a fresh process warms up in full


def test_trials_run_a_round_apart_and_a_failed_case_is_not_repeated():
    order: list[tuple[str, int]] = []

    def run(req: CaseRequest) -> Record:
        assert req.measure is not None
        assert req.measure.trials == 1
        order.append((req.model, len(order)))
        if req.model == "broken":
            return _record(req, 1.0, status="convert_failed", reason="no such op")
        return _record(req, {"a": 2.0, "b": 5.0}[req.model] * (1 + 0.01 * len(order)), pid=len(order))

    lines: list[str] = []
    out = run_rounds(CASES, run, lines.append)
    assert [m for m, _ in order] == ["a", "b", "broken", "a", "b", "a", "b"]
    assert (out[CASES[2]].status, out[CASES[2]].reason) == ("convert_failed", "no such op")
    a = out[CASES[0]]
    assert (len(a.latency["trials_p50_ms"]), a.latency["trials"]) == (3, 3)
    assert [r["pid"] for r in a.extra["rounds"]] == [1, 4, 6]
    assert lines[0].startswith("round 1/3, case 1/3: ")
    assert lines[-1].startswith("round 3/3, case 2/2: ")


def test_merged_latency_pools_samples_and_keeps_each_rounds_median():
    case = CASES[0]
    merged = merge_rounds([_record(case, p, pid=i) for i, p in enumerate((2.0, 2.04, 1.98))], MEASURE)
    lat = merged.latency
    assert lat["trials_p50_ms"] == [2.0, 2.04, 1.98]
    assert lat["n"] == 900
    assert lat["min_ms"] == pytest.approx(1.98 * 0.9)
    assert lat["unstable"] is False  # the medians agree within 10 %: the per-call spikes (CV 0.6) do not count
    assert merged.peak_rss_mb == 101.0  # the median round
    assert merged.timings_s["measure"] == pytest.approx(0.9)
    assert merged.throughput[0]["trials_p50_ms"] == [2.0, 2.04, 1.98]
    assert merged.extra["roofline"]["achieved_gflop_s"] == pytest.approx(1e3 / lat["p50_ms"], rel=1e-3)


def test_rounds_that_disagree_make_the_cell_unstable():
    case = CASES[0]
    merged = merge_rounds([_record(case, 12.8), _record(case, 16.5), _record(case, 12.9)], MEASURE)
    assert merged.latency["unstable"] is True


def test_a_round_that_fails_is_the_record_with_its_round_named():
    case = CASES[0]
    crash = _record(case, 1.0, status="crash", reason="SIGSEGV")
    merged = merge_rounds([_record(case, 2.0), crash, _record(case, 2.0)], MEASURE)
    assert merged.status == "crash"
    assert merged.reason == "round 2 of 3 (round 1: pass): SIGSEGV"


def test_one_round_is_returned_as_it_is():
    rec = _record(CASES[0], 2.0)
    assert merge_rounds([rec]) is rec
    with pytest.raises(ValueError, match="at least one"):
        merge_rounds([])
    assert replace(CASES[0]) == CASES[0]  # requests are the rounds' dictionary keys: equal by value


@needs_ort
def test_harness_run_bench_measures_each_trial_in_its_own_child(capsys, tmp_path_factory, monkeypatch):
    """The README's ``harness run --bench``: one record whose trials ran in five processes."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path_factory.getbasetemp() / "rounds-cache"))
    assert main(["run", "resnet_tiny", "--backend", "ort", "--bench", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "pass"
    assert len(out["latency"]["trials_p50_ms"]) == 5
    assert len({r["pid"] for r in out["extra"]["rounds"]}) == 5
