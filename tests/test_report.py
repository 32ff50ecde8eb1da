"""The HTML report and the trend page, built from the checked-in fixture runs (tests/data/runs)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from harness.core.record import Record
from harness.report import build_report, trend_report
from harness.report.load import latest, load_runs
from harness.results import ResultStore

RUNS = Path(__file__).parent / "data" / "runs"
EVIL = "<img src=x onerror=alert(1)>"
EVIL_REASON = '<script>alert("reason")</script>'
MACHINE_A = "ci-box-3f9a1c"
MACHINE_C = "arm-laptop-77d2e0"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> str:
    out = build_report([RUNS], tmp_path_factory.mktemp("report") / "report.html")
    return out.read_text(encoding="utf-8")


def _figures(html: str) -> int:
    return html.count('class="plotly-graph-div"')


def test_fixture_runs_load_as_written():
    runs = load_runs([RUNS])
    assert sorted(runs.runs) == ["20250101-090000-a1a1a1", "20250102-090000-b2b2b2", "20250102-100000-0p0p0p",
                                 "20250103-120000-c3c3c3"]
    assert runs.machines() == [MACHINE_A, MACHINE_C]
    assert runs.fingerprint(MACHINE_A)["cpu"].startswith("Intel")
    statuses = set(runs.frame["status"])
    assert {"pass", "fallback", "mismatch", "xfail", "xpass", "unsupported", "crash", "convert_failed"} <= statuses
    timed = runs.frame[runs.frame["has_latency"]]
    assert len(timed) > 20
    assert all(len(s) == 24 for s in timed["samples_ms"])
    # newest record per case: run-b's planted verdict change wins over run-a
    newest = latest(runs.for_machine(MACHINE_A))
    row = newest[(newest["model"] == "srcnn_tiny") & (newest["backend"] == "ort") & (newest["precision"] == "int8")]
    assert list(row["status"]) == ["mismatch"]


def test_report_has_every_view_per_machine(report):
    assert f'data-machine="{MACHINE_A}"' in report
    assert f'data-machine="{MACHINE_C}"' in report
    assert 'id="machine-select"' in report
    # machine A: matrix, latency, speed-up, trade-off, memory, ops-by-type, ops-by-opset; machine C: matrix, memory
    assert _figures(report) == 9
    for anchor in ("run-m0", "conformance-m0", "latency-m0", "speedup-m0", "tradeoff-m0", "memory-m0",
                   "operators-m0", "run-m1", "conformance-m1", "memory-m1"):
        assert f'id="{anchor}"' in report, anchor
    assert "operators-m1" not in report  # machine C ran no operator tests
    for status in ("pass", "fallback", "xfail", "xpass", "mismatch", "crash", "unsupported", "convert_failed"):
        assert f'class="st st-{status}"' in report, status
    assert "Intel(R) Xeon(R) CPU @ 2.20GHz" in report
    assert "2026.4.0-20065" in report
    assert "lstm_tiny" in report.split('id="m0-unstable"')[1].split("</table>")[0]  # unstable case listed


def test_conformance_only_run_says_no_performance_data(tmp_path):
    html = build_report([RUNS / "run-c"], tmp_path / "c.html").read_text()
    assert "no performance data" in html
    assert _figures(html) == 2  # conformance matrix + artifact sizes
    assert 'id="machine-select"' not in html  # one machine: no selector


def test_operator_scoreboard_lists_failing_ops_with_engine_error(report):
    failing = report.split('id="m0-opfail"')[1].split("</table>")[0]
    assert "test_einsum_batch_matmul" in failing
    assert "convert_failed" in failing
    assert "&lt;Einsum&gt; equation" in failing  # engine error text, escaped
    assert "test_relu" not in failing
    assert "ort: 11/12 tests (92%)" in report
    assert "ov: 9/12 tests (75%)" in report


def test_record_text_is_escaped_everywhere(report):
    assert EVIL not in report
    assert EVIL_REASON not in report
    assert "&lt;img src=x onerror=alert(1)&gt;" in report  # HTML tables
    assert "\\u003cimg src=x onerror=alert(1)\\u003e" not in report  # plotly JSON gets it pre-escaped ...
    assert "&lt;img src=x onerror=alert(1)&gt;" in report.split("Plotly.newPlot")[1]  # ... as entities
    # every <script> is ours: the plotly bundle, the table script, the nav script and one per figure
    assert report.count("<script") == 3 + _figures(report)


def test_report_is_self_contained(report):
    import plotly.offline

    assert report.count(plotly.offline.get_plotlyjs()[:60]) == 1  # the bundle, embedded exactly once
    assert not re.search(r"<script[^>]*\ssrc\s*=", report, re.IGNORECASE)
    assert not re.search(r"<(link|img|iframe)[^>]*(src|href)\s*=\s*[\"']?(https?:)?//", report, re.IGNORECASE)
    assert len(report.encode()) < 6_000_000


def test_nonfinite_metrics_and_missing_fields_render(tmp_path):
    store = ResultStore(tmp_path, "nf").prepare()
    store.append(Record(run_id="nf", model="m", backend="ort", precision="fp16", status="nonfinite",
                        metrics={"cosine": math.nan, "max_abs": math.inf}, reason="12 NaN/Inf values",
                        machine_id="box", started_at=1.0))
    store.append(Record(run_id="nf", model="m", backend="torch", precision="fp32", status="pass", machine_id="box",
                        started_at=2.0, latency={"p50_ms": 1.0, "p90_ms": 1.1, "p99_ms": 1.2}))  # no samples
    html = build_report([tmp_path], tmp_path / "r.html").read_text()
    assert 'class="st st-nonfinite"' in html
    assert ">inf<" in html
    assert 'id="latency-m0"' in html


def test_run_without_records_renders_a_note(tmp_path):
    store = ResultStore(tmp_path, "empty").prepare()
    store.write_run_info(machine={"machine_id": "box"})  # a session that stopped before any case finished
    html = build_report([store.dir], tmp_path / "r.html").read_text()
    assert "these runs hold no records yet" in html
    assert _figures(html) == 0


def test_missing_results_dir_error_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="no runs under"):
        build_report([tmp_path], tmp_path / "r.html")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_report([tmp_path / "nope"], tmp_path / "r.html")


def test_trend_marks_verdict_changes(tmp_path):
    html = trend_report([RUNS], tmp_path / "trend.html").read_text()
    changes = html.split('id="m0-changes"')[1].split("<tbody>")[1].split("</tbody>")[0]
    rows = re.findall(r"<tr>(.*?)</tr>", changes)
    assert len(rows) == 1  # srcnn_tiny ort int8: pass in run-a, mismatch in run-b; nothing else changed
    assert "srcnn_tiny" in rows[0]
    assert "st-pass" in rows[0]
    assert "st-mismatch" in rows[0]
    assert "worse" in rows[0]
    assert _figures(html) == 1 + 5 + 1  # machine A: timeline + one p50 chart per model; machine C: timeline
    assert "no performance data" in html  # machine C measured no latency
    assert EVIL not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
