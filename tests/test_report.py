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
    assert "ort: 11/11 run tests pass (100%); 1 not run (unsupported/skipped)" in report
    assert "ov: 9/12 run tests pass (75%); 0 not run (unsupported/skipped)" in report


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


# ---------------------------------------------------------------------------------------------- odd input


def _cli(*args: str) -> tuple[int, str, str]:
    import contextlib
    import io

    from harness.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


ODD_LINES = ["[1,2,3]", "null", '"text"', '{"model": 1}', "{"]


def _odd_run(tmp_path: Path, name: str) -> Path:
    """run-c's records with odd but valid JSON lines between them, and a run.json that is a list."""
    import json

    run = tmp_path / name
    run.mkdir()
    good = (RUNS / "run-c" / "records.jsonl").read_text().splitlines()
    first = json.loads(good[0])
    odd = [*ODD_LINES, json.dumps({**first, "latency": "fast"}), json.dumps({**first, "started_at": int("9" * 400)}),
           json.dumps({**first, "model": "huge_metric", "metrics": {"cosine": int("9" * 400)}, "throughput": [1, "x"],
                       "extra": {"op_types": "Conv"}}),
           json.dumps({**first, "model": "odd_latency", "latency": {"p50_ms": "fast", "samples_ms": "abc",
                                                                     "trials_p50_ms": {"a": 1}}})]
    (run / "records.jsonl").write_text("\n".join([good[0], *odd, *good[1:]]) + "\n")
    (run / "run.json").write_text("[1, 2]")
    return run


def test_odd_lines_are_skipped_naming_file_and_line_never_a_crash(tmp_path):
    run = _odd_run(tmp_path, "odd")
    code, _out, err = _cli("report", str(run), "-o", str(tmp_path / "r.html"))
    assert code == 0, err
    for line, what in ((2, "a JSON array, not an object"), (3, "a JSON null, not an object"),
                       (4, "a JSON string, not an object"), (5, "field 'model' must be a JSON string"),
                       (6, "Expecting property name"), (7, "field 'latency' must be a JSON object, got a JSON string"),
                       (8, "field 'started_at' is not a usable number")):
        assert f"harness report: warning: {run / 'records.jsonl'}:{line}: unreadable record skipped ({what}" in err
    assert "run.json holds a JSON array, not an object; ignored" in err
    assert "Traceback" not in err
    html = (tmp_path / "r.html").read_text()
    assert "huge_metric" in html
    assert "odd_latency" in html
    other = _odd_run(tmp_path, "odd2")
    assert _cli("compare", str(run), str(other))[0] == 0
    assert _cli("trend", str(tmp_path), "-o", str(tmp_path / "t.html"))[0] == 0


def test_trend_of_one_run_id_written_by_two_machines(tmp_path):
    """Shards of one --run-id on two machines: one records.jsonl with two machine ids, or two directories."""
    import dataclasses

    from harness.results import read_records

    shared = ResultStore(tmp_path / "one", "shared")
    for i, rec in enumerate(read_records(RUNS / "run-c")):
        shared.append(dataclasses.replace(rec, run_id="shared", machine_id=f"box-{i % 2}"))
    for part in ("a", "b"):
        shard = ResultStore(tmp_path / "two" / part, "nightly-1")
        for rec in read_records(RUNS / "run-c"):
            shard.append(dataclasses.replace(rec, run_id="nightly-1", machine_id=f"runner-{part}"))
        shard.write_run_info(machine={"machine_id": f"runner-{part}"}, started_at=1.0)
    for paths, machines in (([tmp_path / "one"], ("box-0", "box-1")),
                            ([tmp_path / "two" / "a", tmp_path / "two" / "b"], ("runner-a", "runner-b"))):
        html = trend_report(paths, tmp_path / "t.html").read_text()
        for m in machines:
            assert f'data-machine="{m}"' in html
        assert html.count('class="plotly-graph-div"') == 2  # one verdict timeline per machine


def test_trend_with_many_cases_and_no_change(tmp_path):
    import dataclasses

    from harness.results import read_records

    for run in ("r1", "r2"):
        store = ResultStore(tmp_path, run)
        for i in range(50):
            store.append(dataclasses.replace(read_records(RUNS / "run-c")[0], run_id=run, model=f"m{i}",
                                             started_at=float(i + (100 if run == "r2" else 0))))
    html = trend_report([tmp_path], tmp_path / "t.html").read_text()
    assert "no verdict changed in 50 case(s) over 2 run(s)" in html


# ---------------------------------------------------------------------------------------------- output paths


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_report_to_a_directory_is_a_clear_error(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    code, _, err = _cli("report", str(RUNS), "-o", str(target))
    assert code == 2
    assert f"harness report: error: output {target} is a directory: pass a file name such as" in err
    assert _leftovers(tmp_path) == []
    assert list(target.iterdir()) == []
    code, _, err = _cli("trend", str(RUNS), "-o", str(target))
    assert code == 2
    assert "is a directory" in err


def _mount_tmpfs(where: Path, options: str) -> None:
    import subprocess

    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                          text=True, check=False)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs ({options}): needs root and CAP_SYS_ADMIN: {proc.stderr.strip()}")


@pytest.fixture
def mounts(tmp_path):
    import subprocess

    made: list[Path] = []

    def mount(name: str, options: str) -> Path:
        _mount_tmpfs(tmp_path / name, options)
        made.append(tmp_path / name)
        return tmp_path / name

    yield mount
    for m in made:
        subprocess.run(["umount", str(m)], check=False)


def test_report_to_a_read_only_place_is_a_clear_error(tmp_path, mounts):
    import os

    if os.geteuid() != 0:  # a read-only directory is enough when permissions apply
        place = tmp_path / "ro"
        place.mkdir(mode=0o555)
    else:  # root writes through permissions: a read-only mount
        place = mounts("ro", "ro,size=1m")
    code, _, err = _cli("report", str(RUNS), "-o", str(place / "r.html"))
    assert code == 2
    assert f"harness report: error: cannot write {place / 'r.html'}:" in err
    assert "pass -o with a file in a writable directory" in err
    assert list(place.iterdir()) == []


def test_report_on_a_full_disk_leaves_no_temp_file(mounts):
    place = mounts("full", "size=1m")  # the report is ~5 MB with plotly.js
    code, _, err = _cli("report", str(RUNS), "-o", str(place / "r.html"))
    assert code == 2
    assert "No space left on device; free some space or pass -o on another disk" in err
    assert list(place.iterdir()) == []


def test_shared_plotly_pages_reference_the_library(tmp_path):
    from harness.report.dashboard import render
    from harness.report.page import shared_plotly

    with shared_plotly("../../plotly.min.js"):
        html = render(load_runs([RUNS]))
    assert '<script src="../../plotly.min.js" charset="utf-8"></script>' in html
    assert len(html.encode()) < 600_000
    assert _figures(html) == 9
    standalone = render(load_runs([RUNS]))  # outside the context: self-contained again
    assert "<script src=" not in standalone
    assert len(standalone.encode()) > 4_000_000
