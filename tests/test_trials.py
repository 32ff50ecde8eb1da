"""Latency regressions judged on repeated trials, on simulated runs with realistic noise.

The simulation: each case is timed in k = 5 trials (separate processes) of 200 iterations. Iterations
are lognormal with a per-case CV of 10-25 %, autocorrelated within a trial (AR(1), rho 0.7: caches,
frequency and neighbours change slowly) with 2 % interrupt spikes of 1.5-3x; each trial has its own
process-level factor (sigma 3 %). A record carries the pooled percentiles, the raw samples and the k
trial medians (``latency["trials_p50_ms"]``); ``unstable`` is set when the trial medians' CV exceeds 10 %.
Records written before trials existed are one process of 1000 iterations and no ``trials_p50_ms``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.core.record import Record
from harness.report import compare_runs
from harness.report.thresholds import t_sf, trial_test
from harness.results import ResultStore

MACHINE = "sim-box"
# case -> p50 in ms
CASES = {("resnet_tiny", "ort", "fp32"): 3.4, ("resnet_tiny", "ov", "fp32"): 2.9, ("srcnn_tiny", "ort", "fp32"): 1.9,
         ("srcnn_tiny", "ort", "int8"): 0.8, ("transformer_tiny", "ort", "fp32"): 2.6,
         ("lstm_tiny", "ov", "fp32"): 1.2, ("mobilenet_tiny", "ort", "fp32"): 5.1, ("resnet18", "ov", "fp32"): 11.8}
SLOW = ("transformer_tiny", "ort", "fp32")
TRIALS, ITERATIONS, PROCESS_SIGMA, RHO, SPIKES = 5, 200, 0.03, 0.7, 0.02
REPEATS = 5


def _trial(rng: np.random.Generator, p50: float, cv: float, n: int) -> np.ndarray:
    e = np.empty(n)
    e[0] = rng.normal()
    for i in range(1, n):
        e[i] = RHO * e[i - 1] + math.sqrt(1 - RHO * RHO) * rng.normal()
    x = p50 * np.exp(cv * e)
    spikes = rng.random(n) < SPIKES
    x[spikes] *= rng.uniform(1.5, 3.0, int(spikes.sum()))
    return x


def _latency(rng: np.random.Generator, p50: float, cv: float, *, trials: bool) -> dict[str, Any]:
    k, n = (TRIALS, ITERATIONS) if trials else (1, TRIALS * ITERATIONS)
    runs = [_trial(rng, p50 * math.exp(rng.normal(0.0, PROCESS_SIGMA)), cv, n) for _ in range(k)]
    pooled = np.concatenate(runs)
    medians = [float(np.median(r)) for r in runs]
    lat = {"p50_ms": float(np.median(pooled)), "p90_ms": float(np.percentile(pooled, 90)),
           "p99_ms": float(np.percentile(pooled, 99)), "mean_ms": float(pooled.mean()),
           "stdev_ms": float(pooled.std(ddof=1)), "cv": float(pooled.std(ddof=1) / pooled.mean()),
           "min_ms": float(pooled.min()), "n": int(pooled.size), "threads": 2, "batch": 1,
           "samples_ms": [round(float(x), 5) for x in pooled[:: max(1, pooled.size // 500)]]}
    if trials:
        lat["trials_p50_ms"] = medians
        lat["unstable"] = bool(np.std(medians, ddof=1) / np.mean(medians) > 0.10)
    else:
        lat["unstable"] = False  # one process: its own spread says nothing about the next process
    return lat


def simulate(tmp: Path, name: str, seed: int, *, slow: float = 1.0, trials: bool = True,
             unstable: tuple[str, str, str] | None = None) -> Path:
    """One simulated perf run (every case of CASES); ``slow`` multiplies the SLOW case's true latency."""
    rng = np.random.default_rng(seed)
    cv_rng = np.random.default_rng(1000)  # the per-case noise level is a property of the case, not of the run
    store = ResultStore(tmp, name)
    store.dir.mkdir(parents=True)
    for i, ((model, backend, precision), p50) in enumerate(CASES.items()):
        cv = float(cv_rng.uniform(0.10, 0.25))
        lat = _latency(rng, p50 * (slow if (model, backend, precision) == SLOW else 1.0), cv, trials=trials)
        if (model, backend, precision) == unstable:
            lat["unstable"] = True
        store.append(Record(run_id=name, model=model, backend=backend, precision=precision, status="pass",
                            suite="perf", latency=lat, machine_id=MACHINE, started_at=1000.0 * seed + i))
    return store.dir


def _compare(tmp: Path, rep: int, **current: Any):
    base = simulate(tmp / f"r{rep}", "base", 2 * rep, trials=current.get("trials", True))
    cur = simulate(tmp / f"r{rep}", "cur", 2 * rep + 1, **current)
    return compare_runs(base, cur, ["p50:10%"])


def test_identical_runs_compare_clean_5_of_5(tmp_path):
    outcomes = [_compare(tmp_path, rep) for rep in range(REPEATS)]
    clean = [o.exit_code == 0 and not o.regressions for o in outcomes]
    assert sum(clean) == REPEATS, "\n\n".join(o.text for o in outcomes)
    for o in outcomes:
        assert all(d.significance is not None and not d.significance.weak for d in o.diffs)
        assert all("Welch t on log trial medians (k=5 vs 5)" in d.significance.method for d in o.diffs)
    spread = [abs(d.change("p50_ms")) for o in outcomes for d in o.diffs]
    assert max(spread) > 0.01  # the runs really differ, by noise


def test_planted_20_percent_slowdown_is_flagged_5_of_5(tmp_path):
    outcomes = [_compare(tmp_path, rep, slow=1.2) for rep in range(REPEATS)]
    flagged = [[(r.case, r.metric) for r in o.regressions] == [("transformer_tiny ort fp32 [perf]", "p50")]
               for o in outcomes]
    assert sum(flagged) == REPEATS, "\n\n".join(o.text for o in outcomes)
    for o in outcomes:
        assert o.exit_code == 1
        assert "Welch t on log trial medians" in o.regressions[0].detail
        assert "weak evidence" not in o.regressions[0].detail
        assert 0.10 < o.diffs[0].change("p50_ms") < 0.32  # the trials' estimate of the 20 % slowdown


def test_records_without_trials_fall_back_to_weak_evidence(tmp_path):
    outcome = _compare(tmp_path, 0, slow=1.5, trials=False)
    reg = next(r for r in outcome.regressions if r.case.startswith("transformer_tiny"))
    assert "Mann-Whitney over iterations" in reg.detail
    assert "(weak evidence)" in reg.detail
    assert all(d.significance.weak for d in outcome.diffs)
    row = next(line for line in outcome.text.splitlines() if "transformer_tiny" in line)
    assert "w " in row  # the p column marks weak evidence


def test_unstable_cell_is_never_gated(tmp_path):
    outcome = _compare(tmp_path, 0, slow=1.5, unstable=SLOW)
    assert outcome.exit_code == 0, outcome.text
    diff = next(d for d in outcome.diffs if d.label.startswith("transformer_tiny"))
    assert diff.outcome == "changed"
    assert any(n.startswith("p50 +") and n.endswith("not gated (unstable)") for n in diff.notes)


def test_explicit_threshold_with_every_cell_unstable_is_unmeasured(tmp_path):
    base = simulate(tmp_path, "base", 0)
    cur = ResultStore(tmp_path, "cur")
    cur.dir.mkdir()
    for rec in ResultStore(tmp_path, "base").records():
        cur.append(Record(**{**rec.__dict__, "latency": {**rec.latency, "unstable": True}}))
    outcome = compare_runs(base, cur.dir, ["p50:10%"])
    assert outcome.exit_code == 3
    assert "judged no case" in outcome.unmeasured[0].detail
    assert f"{len(CASES)} unstable" in outcome.unmeasured[0].detail


def test_welch_t_matches_scipy():
    stats = pytest.importorskip("scipy.stats", reason="scipy is only the cross-check; the harness does not need it")
    for t in (-4.0, -0.3, 0.0, 0.7, 2.1, 6.0):
        for df in (1.0, 2.3, 4.0, 7.9, 30.0, 400.0):
            assert t_sf(t, df) == pytest.approx(float(stats.t.sf(t, df)), rel=1e-9, abs=1e-14)
    rng = np.random.default_rng(7)
    for _ in range(20):
        b, c = rng.lognormal(0, 0.05, 3), rng.lognormal(0.05, 0.08, 5)
        expected = stats.ttest_ind(np.log(c), np.log(b), equal_var=False, alternative="greater").pvalue
        assert trial_test(b, c).p_value == pytest.approx(float(expected), rel=1e-8)
    assert trial_test([2.0] * 3, [2.0] * 3).p_value == 1.0  # identical, zero variance: not slower
    assert trial_test([2.0] * 3, [2.2] * 3).slower
