"""The report's speed views on records as the main job writes them: the first screen names the fastest passing
engine per model (never a fallback), failures are listed by cause with their reasons, fallbacks are marked where
speed-ups show, cases that never ran show no memory, and run.json's phase totals become the time view."""

from __future__ import annotations

import re
from html import unescape

import pytest

from harness.core.record import Record
from harness.report import build_report
from harness.report.figures import best_per_model, memory_cases, perf_cases, speedups
from harness.report.load import load_runs
from harness.results import ResultStore
from harness.run.case import phase_totals

MACHINE = "box-1"


def _lat(p50: float, **extra: float) -> dict:
    return {"p50_ms": p50, "p90_ms": p50 * 1.1, "p99_ms": p50 * 1.3, "mean_ms": p50 * 1.05, "stdev_ms": 0.01,
            "cv": 0.02, "min_ms": p50 * 0.95, "n": 30, "threads": 2, "batch": 1, "trials_p50_ms": [p50] * 3,
            "load_1m": 5.5, "cpus": 2, **extra}


def _rec(model: str, backend: str, precision: str, status: str, *, t: float, p50: float | None = None,
         cosine: float = 0.99999, cause: str = "", reason: str = "", suite: str = "conformance",
         executed: str | None = None, peak: float | None = 80.0) -> Record:
    return Record(run_id="run1", model=model, backend=backend, precision=precision, status=status, suite=suite,
                  reason=reason, cause=cause, machine_id=MACHINE, started_at=t,
                  executed_precision=executed if executed is not None else (precision if status != "unsupported"
                                                                            else ""),
                  metrics={"cosine": cosine, "max_abs": 1e-3}, latency=_lat(p50) if p50 is not None else None,
                  peak_rss_mb=peak, artifact_mb=1.5, timings_s={"reference": 0.5, "build": 1.0, "measure": 0.3},
                  duration_s=2.0, extra={"worker": {"overhead_s": 0.1}})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    store = ResultStore(tmp_path_factory.mktemp("results"), "run1").prepare()
    records = [
        _rec("resnet18", "torch", "fp32", "pass", t=1, p50=20.0, cosine=1.0),
        _rec("resnet18", "ort", "fp32", "pass", t=2, p50=8.0),
        _rec("resnet18", "ov", "int8", "pass", t=3, p50=4.0, cosine=0.99912),
        _rec("resnet18", "ort", "fp16", "fallback", t=4, p50=2.0, executed="mixed(fp16-storage,fp32-compute)",
             cause="engine", reason="outputs match, but fp16 was requested and the engine executed fp32"),
        _rec("resnet18", "ov", "int8", "pass", t=5, p50=3.0, cosine=0.99912, suite="perf"),  # isolated: preferred
        _rec("resnet18", "ncnn", "int8", "unsupported", t=6, cause="environment", peak=0.5,
             reason="ncnn int8 needs ncnn2table and ncnn2int8"),
        _rec("lstm", "ort", "int8", "mismatch", t=7, cosine=0.91, cause="engine", reason="cosine 0.91 < 0.98"),
        _rec("lstm", "ov", "fp32", "error", t=8, cause="harness", reason="KeyError: 'h0' [perf.py:12]"),
    ]
    for r in records:
        store.append(r)
    store.write_run_info(started_at=0.5, finished_at=20.0, phases_s=phase_totals(records))
    return store.dir


@pytest.fixture(scope="module")
def html(run_dir, tmp_path_factory) -> str:
    return build_report([run_dir], tmp_path_factory.mktemp("report") / "r.html").read_text()


def _text(html: str, anchor: str) -> str:
    """The visible text of one section (no hovering needed to read it)."""
    start = html.index(f'id="{anchor}"')
    body = html[start:html.index("</section>", start)]
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)))


def test_fastest_passing_engine_is_the_first_section(html):
    sections = re.findall(r'<section class="card" id="([^"]+)"', html)
    assert sections[0] == "fastest-m0"
    text = _text(html, "fastest-m0")
    row = re.search(r"resnet18 (\S+ \S+) (\S+) (\S+) (\S+) (\S+)", text.split(" note ")[-1])
    assert row.groups() == ("ov int8", "int8", "3", "6.67", "0.999120")  # the perf suite's 3 ms beats the quick 4
    assert "ort fp16 is faster (2 ms) but a FALLBACK: executed mixed(fp16-storage,fp32-compute)" in text
    assert "next: ort fp32" in text
    assert "busy machine (1-minute load up to 5.5 on 2 CPUs)" in text


def test_best_per_model_never_picks_a_fallback(run_dir):
    perf = perf_cases(load_runs([run_dir]).frame)
    assert len(perf[(perf["model"] == "resnet18") & (perf["backend"] == "ov")]) == 1  # one row per cell
    best = {r["model"]: r for r in best_per_model(perf)}
    assert best["resnet18"]["best"] == "ov int8"
    assert best["resnet18"]["speedup_vs_torch"] == pytest.approx(20.0 / 3.0)
    assert "lstm" not in best  # nothing of lstm passed, so nothing was timed: no engine is named


def test_failures_are_grouped_by_cause_with_readable_reasons(html):
    text = _text(html, "failures-m0")
    order = [text.index(f"{c} (") for c in ("harness", "engine", "environment")]
    assert order == sorted(order)  # ours first
    assert "KeyError: 'h0' [perf.py:12]" in text
    assert "cosine 0.91 < 0.98" in text
    assert "ncnn int8 needs ncnn2table and ncnn2int8" in text
    assert "engine (2)" in text  # the fallback and the mismatch
    assert "resnet18 ort fp32" not in text  # passes are not failures


def test_speedups_mark_fallbacks(run_dir):
    import plotly.io

    from harness.report import figures

    perf = perf_cases(load_runs([run_dir]).frame)
    fig = plotly.io.to_json(figures.speedup(perf))
    assert "FALLBACK" in fig
    assert '"shape":["x"]' in fig.replace(" ", "")  # the fallback bar is cross-hatched
    assert speedups(perf).loc[lambda d: d["status"] == "fallback", "speedup_vs_torch"].iloc[0] == pytest.approx(10.0)


def test_cases_that_never_ran_show_no_memory(run_dir):
    mem = memory_cases(load_runs([run_dir]).frame)
    unsupported = mem[mem["status"] == "unsupported"]
    assert unsupported["peak_rss_mb"].isna().all()
    assert mem.loc[mem["status"] == "pass", "peak_rss_mb"].notna().all()


def test_time_view_shows_the_phases_of_the_run(html):
    text = _text(html, "time-m0")
    assert "By backend" in text
    assert "By suite" in text
    assert re.search(r"ov 3 \S+", text)  # ov's three cases
    assert "process start" in text


def test_harness_run_prints_cosine_with_every_digit():
    from harness.cli import format_record

    text = format_record(Record(run_id="r", model="m", backend="ort", precision="int8", status="pass",
                                metrics={"cosine": 0.99997, "max_abs": 0.0123}))
    assert "cosine=0.99997," in text
    assert "cosine=1" not in text
    assert "peak RSS" not in format_record(Record(run_id="r", model="m", backend="ncnn", precision="int8",
                                                  status="unsupported", peak_rss_mb=0.5))
