"""Run-vs-run regression detection on the fixture runs and planted changes of them."""

from __future__ import annotations

import dataclasses
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from harness.core.record import Record
from harness.report import FailOn, FailOnSyntaxError, compare_runs, parse_fail_on
from harness.report.thresholds import bootstrap_test, slower_test
from harness.results import ResultStore, read_records

RUNS = Path(__file__).parent / "data" / "runs"
RUN_A = RUNS / "run-a"
RUN_B = RUNS / "run-b"
RUN_C = RUNS / "run-c"
SLOW_CASE = ("resnet_tiny", "ort", "fp32")


def _latency_from(samples: list[float], old: dict) -> dict:
    s = np.asarray(samples)
    return {**old, "samples_ms": [round(float(x), 4) for x in s], "p50_ms": float(np.percentile(s, 50)),
            "p90_ms": float(np.percentile(s, 90)), "p99_ms": float(np.percentile(s, 99)), "mean_ms": float(s.mean()),
            "min_ms": float(s.min())}


def derive(tmp: Path, name: str, change: Callable[[Record], Record], src: Path = RUN_A) -> Path:
    """A copy of a fixture run (same run id and machine) with ``change`` applied to every record."""
    store = ResultStore(tmp, name)
    store.dir.mkdir(parents=True)
    for rec in read_records(src):
        store.append(change(rec))
    shutil.copy(src / "run.json", store.dir / "run.json")
    return store.dir


def slower(factor: float, case: tuple[str, str, str] = SLOW_CASE) -> Callable[[Record], Record]:
    def change(r: Record) -> Record:
        if (r.model, r.backend, r.precision) != case or not r.latency:
            return r
        return dataclasses.replace(r, latency=_latency_from([x * factor for x in r.latency["samples_ms"]], r.latency))
    return change


def jitter(fraction: float, seed: int = 3) -> Callable[[Record], Record]:
    rng = np.random.default_rng(seed)

    def change(r: Record) -> Record:
        if not r.latency:
            return r
        noisy = [x * rng.uniform(1 - fraction, 1 + fraction) for x in r.latency["samples_ms"]]
        return dataclasses.replace(r, latency=_latency_from(noisy, r.latency))
    return change


def test_run_compared_with_itself_has_no_regression():
    outcome = compare_runs(RUN_A, RUN_A, ["p50:10%", "p99:20%", "cosine:0.001", "peak_rss_mb:15%"])
    assert outcome.exit_code == 0
    assert outcome.regressions == []
    assert len(outcome.diffs) == 30
    assert {d.outcome for d in outcome.diffs} == {"same"}
    assert "no regression in 30 matched cases" in outcome.text


def test_noise_only_copy_does_not_alarm(tmp_path):
    noisy = derive(tmp_path, "noisy", jitter(0.04))
    outcome = compare_runs(RUN_A, noisy, ["p50:10%", "p99:20%"])
    assert outcome.exit_code == 0, outcome.text
    changes = [abs(d.change("p50_ms")) for d in outcome.diffs if d.cur["has_latency"]]
    assert 0 < max(changes) < 0.06  # the copy really differs, by noise only


def test_planted_50_percent_slowdown_is_a_regression(tmp_path):
    slow = derive(tmp_path, "slow", slower(1.5))
    out = tmp_path / "cmp.html"
    outcome = compare_runs(RUN_A, slow, ["p50:10%"], out=out)
    assert outcome.exit_code == 1
    assert [(r.case, r.metric) for r in outcome.regressions] == [("resnet_tiny ort fp32 [perf]", "p50")]
    reg = outcome.regressions[0]
    assert reg.change == "+50.0%"
    assert "Mann-Whitney" in reg.detail
    rows = [line for line in outcome.text.splitlines() if line.startswith(("REGRESSION", "changed", "same"))]
    assert rows[0].startswith("REGRESSION  resnet_tiny ort fp32")
    assert len(rows) == 30
    html = out.read_text()
    assert 'class="regression"' in html
    assert "1 regression(s)" in html
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_slowdown_within_threshold_or_noise_is_not_a_regression(tmp_path):
    slow = derive(tmp_path, "slow", slower(1.5))
    assert compare_runs(RUN_A, slow, ["p50:60%"]).exit_code == 0  # significant, but within the threshold
    # run-b: lstm_tiny ort fp16 (CV 0.22, flagged unstable) is 11% slower at p50, beyond 10%: never gated
    outcome = compare_runs(RUN_A, RUN_B, ["p50:10%"])
    lstm = next(d for d in outcome.diffs if d.label.startswith("lstm_tiny ort fp16"))
    assert lstm.change("p50_ms") > 0.10
    assert lstm.outcome == "changed"
    assert any("not gated (unstable)" in n for n in lstm.notes)
    assert {(r.case.split(" [")[0], r.metric) for r in outcome.regressions} == {
        ("resnet_tiny ort fp32", "p50"), ("srcnn_tiny ort int8", "verdict")}


def test_verdict_change_pass_to_mismatch_is_always_a_regression(tmp_path):
    def broken(r: Record) -> Record:
        if (r.model, r.backend, r.precision) == ("srcnn_tiny", "ort", "fp32"):
            return dataclasses.replace(r, status="mismatch", reason="out: max abs 0.3", latency=None)
        if (r.model, r.backend, r.precision) == ("srcnn_tiny", "ov", "fp32"):
            return dataclasses.replace(r, status="xfail", reason="known failure: added to the list")
        return r
    outcome = compare_runs(RUN_A, derive(tmp_path, "broken", broken), ["p50:1000%"])
    assert outcome.exit_code == 1
    assert [(r.case, r.metric, r.baseline, r.current) for r in outcome.regressions] == [
        ("srcnn_tiny ort fp32 [perf]", "verdict", "pass", "mismatch")]
    acknowledged = next(d for d in outcome.diffs if d.label.startswith("srcnn_tiny ov fp32"))
    assert acknowledged.outcome == "changed"
    assert "verdict pass -> xfail" in acknowledged.notes


def test_missing_samples_fall_back_to_p50_threshold_and_say_so(tmp_path):
    def strip(r: Record) -> Record:
        return dataclasses.replace(r, latency={k: v for k, v in r.latency.items() if k != "samples_ms"}) \
            if r.latency else r
    base = derive(tmp_path, "base", strip)
    slow = derive(tmp_path, "slow", lambda r: strip(slower(1.5)(r)))
    outcome = compare_runs(base, slow, ["p50:10%", "p99:20%"])
    assert outcome.exit_code == 1
    assert [r.metric for r in outcome.regressions] == ["p50"]  # p99 is not judged without samples
    row = outcome.diffs[0]
    assert "no raw samples: threshold on p50 only, no significance test" in row.notes
    assert any(n.startswith("p99 +50.0% not tested") for n in row.notes)
    assert "no raw samples" in outcome.text


def test_bootstrap_fallback_without_scipy(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # import raises ImportError
    assert slower_test([1.0] * 5 + [1.1] * 5, [1.6] * 10).method == "bootstrap"
    slow = derive(tmp_path, "slow", slower(1.5))
    outcome = compare_runs(RUN_A, slow, ["p50:10%"])
    assert outcome.exit_code == 1
    assert "bootstrap" in outcome.regressions[0].detail
    assert compare_runs(RUN_A, derive(tmp_path, "noisy", jitter(0.04)), ["p50:10%"]).exit_code == 0


def test_bootstrap_and_mann_whitney_agree_on_clear_cases():
    rng = np.random.default_rng(0)
    base = rng.lognormal(0, 0.05, 40)
    assert bootstrap_test(base, base * 1.3).slower
    assert slower_test(base, base * 1.3).slower
    same = rng.permutation(base)
    assert not bootstrap_test(base, same).slower
    assert not slower_test(base, same).slower
    assert slower_test(base[:3], base[:3] * 2) is None  # too few samples to test


def test_peak_memory_and_cosine_thresholds(tmp_path):
    def heavier(r: Record) -> Record:
        if (r.model, r.backend, r.precision) == ("lstm_tiny", "ov", "fp32"):
            return dataclasses.replace(r, peak_rss_mb=r.peak_rss_mb * 1.3, metrics={**r.metrics, "cosine": 0.998})
        return r
    cur = derive(tmp_path, "heavy", heavier)
    outcome = compare_runs(RUN_A, cur, ["peak_rss_mb:15%", "cosine:0.001"])
    assert sorted(r.metric for r in outcome.regressions) == ["cosine", "peak_rss_mb"]
    assert compare_runs(RUN_A, cur, ["peak_rss_mb:50%", "cosine:0.01"]).exit_code == 0


def test_peak_memory_of_a_cold_build_is_not_gated_against_a_warm_one(tmp_path):
    """A case that built its artifacts (cold cache: export, quantization) has them in its peak; the other run's
    case read them from the cache: the two peaks are not the same quantity."""
    case = ("lstm_tiny", "ov", "fp32")

    def cold(r: Record) -> Record:
        if (r.model, r.backend, r.precision) != case:
            return r
        memory = {**r.extra.get("memory", {}), "built": ["model-dynamo-op18.onnx", "ov-onnx-fp32.xml"]}
        return dataclasses.replace(r, peak_rss_mb=r.peak_rss_mb * 2, extra={**r.extra, "memory": memory})

    outcome = compare_runs(RUN_A, derive(tmp_path, "cold", cold), ["peak_rss_mb:15%"])
    assert outcome.exit_code == 0
    assert not outcome.regressions
    diff = next(d for d in outcome.diffs if (d.base["model"], d.base["backend"], d.base["precision"]) == case)
    assert diff.outcome == "changed"
    assert any("not gated (cold cache)" in n for n in diff.notes), diff.notes


def test_runs_of_different_machines_are_not_compared():
    outcome = compare_runs(RUN_A, RUN_C)
    assert outcome.exit_code == 2
    assert outcome.diffs == []
    assert "different machines" in outcome.text
    assert "HARNESS_MACHINE_ID" in outcome.text


def test_parse_fail_on():
    assert parse_fail_on(["p50:10%"]) == (FailOn("p50", 0.1, True, "%"),)
    assert parse_fail_on("p99:20%, cosine:0.001") == (FailOn("p99", 0.2, True, "%"), FailOn("cosine", 0.001, False))
    assert parse_fail_on(["p50:0.5ms", "peak_rss_mb:15%"])[0] == FailOn("p50", 0.5, False, "ms")
    assert str(parse_fail_on("p50:10%")[0]) == "p50:10%"


@pytest.mark.parametrize(("item", "message"), [
    ("p50=10%", "expected METRIC:THRESHOLD"),
    ("p50:", "expected METRIC:THRESHOLD"),
    ("p50:-5%", "non-negative number"),
    ("p50:ten%", "e.g. p50:10%"),
    ("p42:10%", "unknown metric 'p42'; metrics: p50, p90, p99"),
    ("cosine:5%", "cosine takes a plain number"),
    ("p50:10mb", "p50 takes '%' or 'ms'"),
])
def test_bad_fail_on_syntax_says_what_is_expected(item, message):
    with pytest.raises(FailOnSyntaxError, match=message) as info:
        parse_fail_on([item])
    assert repr(item) in str(info.value)
    with pytest.raises(ValueError, match="bad --fail-on"):
        compare_runs(RUN_A, RUN_A, [item])


# ---------------------------------------------------------------------------------------------- gates


def _case(r: Record) -> tuple[str, str, str]:
    return (r.model, r.backend, r.precision)


def drop(keep: Callable[[Record], bool]) -> Callable[[Record], Record | None]:
    return lambda r: r if keep(r) else None


def derive_some(tmp: Path, name: str, change: Callable[[Record], Record | None], src: Path = RUN_A) -> Path:
    """``derive`` whose change may drop a record (returns None)."""
    store = ResultStore(tmp, name)
    store.dir.mkdir(parents=True)
    for rec in read_records(src):
        if (new := change(rec)) is not None:
            store.append(new)
    shutil.copy(src / "run.json", store.dir / "run.json")
    return store.dir


def test_lost_cases_exit_3_naming_them(tmp_path):
    """The issue: the current run lost 7 of 11 cases and compare said "no regression in 4 matched cases"."""
    lost = derive_some(tmp_path, "lost", drop(lambda r: r.backend != "ort"))
    outcome = compare_runs(RUN_A, lost, ["p50:10%"])
    assert outcome.exit_code == 3, outcome.text
    assert outcome.regressions == []
    names = {m.case for m in outcome.missing}
    assert len(names) == 13
    assert all(" ort " in n for n in names)
    assert "MISSING srcnn_tiny ort fp32 [perf]: pass in the baseline, no record in the current run" in outcome.text
    assert "missing: no record in the current run (13)" in outcome.text
    assert compare_runs(RUN_A, lost, ["p50:10%", "no-missing"]).exit_code == 0


def test_current_run_without_any_record_is_all_missing(tmp_path):
    empty = ResultStore(tmp_path, "empty").prepare()
    shutil.copy(RUN_A / "run.json", empty.dir / "run.json")
    outcome = compare_runs(RUN_A, empty.dir)
    assert outcome.exit_code == 3
    assert len(outcome.missing) == 30


@pytest.mark.parametrize("latency", [None, "nan"], ids=["missing", "nan"])
def test_missing_or_nan_latency_exits_3(tmp_path, latency):
    def unmeasure(r: Record) -> Record:
        if _case(r) != SLOW_CASE:
            return r
        lat = None if latency is None else {**r.latency, "p50_ms": "nan", "samples_ms": []}
        return dataclasses.replace(r, latency=lat)
    outcome = compare_runs(RUN_A, derive(tmp_path, "unmeasured", unmeasure), ["p50:10%"])
    assert outcome.exit_code == 3, outcome.text
    (finding,) = outcome.unmeasured
    assert finding.case == "resnet_tiny ort fp32 [perf]"
    assert "p50 measured in the baseline, missing or NaN in the current run although its verdict is pass" \
        in finding.detail
    assert outcome.diffs[0].outcome == "UNMEASURED"
    assert compare_runs(RUN_A, derive(tmp_path, "u2", unmeasure), ["p50:10%", "no-unmeasured"]).exit_code == 0


def test_pass_to_skipped_is_a_status_regression_grouped_by_cause(tmp_path):
    def skip(r: Record) -> Record:
        if r.status == "pass" and r.backend == "ov":
            return dataclasses.replace(r, status="skipped", reason="ov: openvino not installed", cause="environment",
                                       latency=None)
        if _case(r) == ("srcnn_tiny", "ort", "fp32"):
            return dataclasses.replace(r, status="crash", reason="SIGSEGV in the engine", cause="engine", latency=None)
        return r
    outcome = compare_runs(RUN_A, derive(tmp_path, "skipped", skip), ["p50:10%"])
    assert outcome.exit_code == 1
    kinds = {(r.metric, r.cause) for r in outcome.regressions}
    assert kinds == {("status", "environment"), ("verdict", "engine")}
    assert sum(r.metric == "status" for r in outcome.regressions) == 6  # ov: 8 cases, 6 passed in run-a
    text = outcome.text
    assert "failures by cause:" in text
    assert "  environment (6):" in text
    assert "  engine (1):" in text
    assert text.index("  environment (6):") < text.index("  engine (1):")  # biggest group first
    assert "REGRESSION srcnn_tiny ov fp32 [perf]: status pass -> skipped: ov: openvino not installed" in text
    relaxed = compare_runs(RUN_A, derive(tmp_path, "s2", skip), ["p50:10%", "no-status"])
    assert [r.metric for r in relaxed.regressions] == ["verdict"]  # pass -> crash stays a regression


def test_runs_without_latency_do_not_pass_an_explicit_latency_gate():
    """Two conformance-only runs compared with --fail-on p50:10% compared clean before: the gate judged nothing."""
    outcome = compare_runs(RUN_C, RUN_C, ["p50:10%"])
    assert outcome.exit_code == 3
    (finding,) = outcome.unmeasured
    assert "--fail-on p50:10% judged no case: p50 measured in 0 baseline and 0 current case(s)" in finding.detail
    assert compare_runs(RUN_C, RUN_C).exit_code == 0  # the default p50:10% is not a request to measure
    assert compare_runs(RUN_C, RUN_C, ["status"]).exit_code == 0
    assert compare_runs(RUN_C, RUN_C, ["cosine:0.001"]).exit_code == 0  # cosine was measured


def test_gate_names_parse_and_switch_off():
    from harness.report.thresholds import parse_criteria

    c = parse_criteria(["p50:10%", "no-status", "missing"])
    assert c.gates == {"missing", "unmeasured"}
    assert c.explicit
    assert str(c) == "p50:10%, missing, unmeasured, no-status"
    d = parse_criteria([])
    assert d.thresholds == (FailOn("p50", 0.1, True, "%"),)
    assert not d.explicit
    assert d.gates == {
        "missing", "unmeasured", "status"}
    with pytest.raises(FailOnSyntaxError, match="or a gate: missing, unmeasured, status"):
        parse_criteria(["mising"])


def _cli(*args: str) -> tuple[int, str, str]:
    import contextlib
    import io

    from harness.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_cli_exit_codes(tmp_path):
    lost = derive_some(tmp_path, "lost", drop(lambda r: r.backend != "ncnn"))
    assert _cli("compare", str(RUN_A), str(RUN_A))[0] == 0
    assert _cli("compare", str(RUN_A), str(RUN_B), "--fail-on", "p50:10%")[0] == 1
    assert _cli("compare", str(RUN_A), str(RUN_C))[0] == 2
    code, out, _ = _cli("compare", str(RUN_A), str(lost), "--fail-on", "p50:10%", "--fail-on", "missing")
    assert code == 3
    assert "FAIL (exit 3): 4 missing case(s)" in out
    code, _, err = _cli("compare", str(RUN_A), str(RUN_A), "--fail-on", "p42:1%")
    assert code == 2
    assert "unknown metric 'p42'" in err
    code, _, err = _cli("compare", str(RUN_A), str(RUN_A), "-o", str(tmp_path))
    assert code == 2
    assert "is a directory" in err
