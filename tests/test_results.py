"""Records: schema, crash-safe append, machine fingerprint."""

from __future__ import annotations

import json
import math
import multiprocessing as mp

import pytest

from harness.core.machine import machine_fingerprint
from harness.core.record import Record
from harness.results import ResultStore, read_records


def _record(i: int = 0, **kw) -> Record:
    return Record(run_id="r", model=f"m{i}", backend="ort", precision="fp32", status="pass", **kw)


def test_append_and_read_back(tmp_path):
    store = ResultStore(tmp_path, "run1").prepare()
    store.append(_record(0, metrics={"cosine": 1.0, "max_abs": math.inf}))
    store.append(_record(1))
    recs = store.records()
    assert [r.model for r in recs] == ["m0", "m1"]
    assert recs[0].metrics["max_abs"] == "inf"  # still valid JSON
    for line in store.records_path.read_text().splitlines():
        json.loads(line)


def test_required_schema_fields():
    d = json.loads(_record().to_json())
    for key in ("run_id", "model", "backend", "precision", "suite", "status", "reason", "executed_precision",
                "metrics", "outputs", "settings", "timings_s", "artifact", "export", "backend_version"):
        assert key in d


def test_truncated_last_line_is_skipped_not_fatal(tmp_path):
    store = ResultStore(tmp_path, "run1").prepare()
    store.append(_record(0))
    with store.records_path.open("a") as f:
        f.write('{"run_id": "r", "model": "half')  # a line cut by SIGKILL mid-write
    with pytest.warns(RuntimeWarning, match="unreadable record skipped"):
        recs = read_records(store.dir)
    assert [r.model for r in recs] == ["m0"]


def test_unknown_fields_from_newer_schema_are_kept():
    r = Record.from_dict({**json.loads(_record().to_json()), "new_field": 3})
    assert r.extra["new_field"] == 3


def _writer(path: str, worker: int, n: int) -> None:
    store = ResultStore(path, "shared")
    for i in range(n):
        store.append(_record(worker * 1000 + i, reason="x" * 5000))


def test_concurrent_appends_never_interleave(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 40)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    recs = read_records(tmp_path / "shared")
    assert len(recs) == 120
    assert len({r.model for r in recs}) == 120


def test_unwritable_results_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match="is not writable.*--results-dir"):
        ResultStore(blocker / "results", "r").prepare()


def test_run_info_has_machine_fingerprint(tmp_path):
    store = ResultStore(tmp_path, "r").prepare()
    info = json.loads(store.write_run_info(started_at=1.0).read_text())
    machine = info["machine"]
    for key in ("cpu", "cores", "ram_gb", "os", "python", "versions", "git_commit", "machine_id"):
        assert key in machine
    assert "torch" in machine["versions"]
    assert machine_fingerprint()["cores"] >= 1
