"""Records: schema, crash-safe append, machine fingerprint."""

from __future__ import annotations

import errno
import json
import math
import multiprocessing as mp
import os
import subprocess

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
    with pytest.raises(OSError, match=r"is not writable.*--results-dir"):
        ResultStore(blocker / "results", "r").prepare()


def test_run_info_has_machine_fingerprint(tmp_path):
    store = ResultStore(tmp_path, "r").prepare()
    info = json.loads(store.write_run_info(started_at=1.0).read_text())
    machine = info["machine"]
    for key in ("cpu", "cores", "ram_gb", "os", "python", "versions", "git_commit", "machine_id"):
        assert key in machine
    assert "torch" in machine["versions"]
    assert machine_fingerprint()["cores"] >= 1


# ---------------------------------------------------------------------------------------------- disk full


class ShortWrites:
    """``os.write`` as a filling disk does it: the first call writes part of the data, the next raises ENOSPC."""

    def __init__(self, real, first: int) -> None:
        self.real, self.first, self.calls = real, first, 0

    def __call__(self, fd: int, data) -> int:
        self.calls += 1
        if self.calls == 1:
            return self.real(fd, bytes(data[: self.first]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_short_write_raises_and_leaves_no_fragment(tmp_path, monkeypatch):
    store = ResultStore(tmp_path, "full").prepare()
    store.append(_record(0))
    before = store.records_path.read_bytes()
    monkeypatch.setattr("harness.results.os.write", ShortWrites(os.write, 281))
    with pytest.raises(OSError, match=r"record of m1-ort-fp32 was not written.*partial line was removed") as info:
        store.append(_record(1, reason="x" * 2000))
    assert info.value.errno == errno.ENOSPC
    assert store.records_path.read_bytes() == before  # the 281-byte fragment was cut off again
    monkeypatch.undo()
    store.append(_record(2))
    assert [r.model for r in store.records()] == ["m0", "m2"]


def test_short_write_that_completes_is_not_an_error(tmp_path, monkeypatch):
    real = os.write
    monkeypatch.setattr("harness.results.os.write", lambda fd, data: real(fd, bytes(data[:100])))  # 100 B a call
    store = ResultStore(tmp_path, "slow").prepare()
    store.append(_record(0, reason="y" * 5000))
    assert store.records()[0].reason == "y" * 5000


def test_a_later_append_is_never_glued_to_a_fragment(tmp_path, monkeypatch):
    """The fragment cannot even be truncated (or a killed writer left it): the next record starts a new line."""
    store = ResultStore(tmp_path, "frag").prepare()
    store.append(_record(0))
    monkeypatch.setattr("harness.results.os.write", ShortWrites(os.write, 281))
    monkeypatch.setattr("harness.results.os.ftruncate", lambda fd, n: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
    with pytest.raises(OSError, match="could not be removed"):
        store.append(_record(1, reason="x" * 2000))
    monkeypatch.undo()
    store.append(_record(2))
    with pytest.warns(RuntimeWarning, match=r"records.jsonl:2: unreadable record skipped"):
        recs = store.records()
    assert [r.model for r in recs] == ["m0", "m2"]


def test_run_info_write_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    store = ResultStore(tmp_path, "ri").prepare()
    store.write_run_info(started_at=1.0)
    old = (store.dir / "run.json").read_text()
    monkeypatch.setattr("harness.results.os.write", ShortWrites(os.write, 10))
    with pytest.raises(OSError, match=r"run\.json was not written"):
        store.write_run_info(finished_at=2.0)
    assert (store.dir / "run.json").read_text() == old
    assert sorted(p.name for p in store.dir.iterdir()) == ["run.json"]


def test_run_json_that_is_not_an_object_is_replaced(tmp_path):
    store = ResultStore(tmp_path, "odd").prepare()
    (store.dir / "run.json").write_text("[1, 2, 3]")
    with pytest.warns(RuntimeWarning, match="run.json holds a JSON array"):
        info = json.loads(store.write_run_info(started_at=1.0).read_text())
    assert info["started_at"] == 1.0
    assert isinstance(info["machine"], dict)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 16 KB tmpfs (needs root, as in the issue's reproduction)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a 16 KB tmpfs (mount -t tmpfs needs root and CAP_SYS_ADMIN; uid {os.getuid()}): "
                    f"{proc.stderr.strip() or proc.returncode}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_full_tmpfs_never_loses_a_record_silently(small_tmpfs):
    store = ResultStore(small_tmpfs, "r1").prepare()
    store.write_run_info(started_at=1.0)
    ballast = small_tmpfs / "ballast"
    ballast.write_bytes(b"b" * 8192)  # two pages that are given back later
    written, errors = [], []
    for i in range(20):  # ~1.2 KB records: the file system fills up part way through
        try:
            store.append(_record(i, reason="z" * 1200))
            written.append(f"m{i}")
        except OSError as exc:
            errors.append(exc)
    assert errors, "the tmpfs did not fill up: the test proves nothing"
    assert written
    assert {e.errno for e in errors} == {errno.ENOSPC}
    assert all("was not written" in str(e) for e in errors)
    assert [r.model for r in store.records()] == written  # every append that returned is whole and in order
    with pytest.raises(OSError, match=r"run\.json was not written"):
        store.write_run_info(finished_at=2.0, padding="p" * 8000)
    assert sorted(p.name for p in store.dir.iterdir()) == ["records.jsonl", "run.json"]  # no temp file left
    ballast.unlink()  # space is back: the same run id is appended to again
    again = ResultStore(small_tmpfs, "r1")
    again.append(_record(99))
    again.write_run_info(finished_at=3.0)
    assert [r.model for r in again.records()] == [*written, "m99"]


def test_run_id_that_climbs_out_is_rejected(tmp_path):
    for bad in ("../../x", "/abs", "a/b", "..", ".hidden", "", "x" * 200, "a\nb"):
        with pytest.raises(ValueError, match="is not a plain name"):
            ResultStore(tmp_path / "results", bad)
    assert not (tmp_path / "x").exists()
    assert ResultStore(tmp_path, "nightly-123-1-ort-1of2").dir == tmp_path / "nightly-123-1-ort-1of2"
