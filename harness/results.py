"""Records and the append-only, crash-safe result store.

One JSON line per finished case in ``<results-dir>/<run-id>/records.jsonl``:
each line is written with one ``write`` on an ``O_APPEND`` descriptor under an
exclusive ``flock`` and ``fsync``-ed, so concurrent writers (xdist workers,
case subprocesses) never interleave, and a killed session loses at most the
line being written, which readers skip. Earlier lines are never rewritten.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.core.machine import machine_fingerprint
from harness.core.record import SCHEMA_VERSION, Record, _jsonable


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a short random suffix."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


class ResultStore:
    """The records and metadata of one run under ``<results_dir>/<run_id>/``."""

    def __init__(self, results_dir: str | Path, run_id: str | None = None) -> None:
        self.run_id = run_id or new_run_id()
        self.dir = Path(results_dir) / self.run_id
        self.records_path = self.dir / "records.jsonl"

    def prepare(self) -> ResultStore:
        """Create the run directory and prove it is writable; raise OSError with a clear message if not."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".write-probe-{os.getpid()}"
            probe.write_bytes(b"x" * 4096)
            os.fsync(os.open(probe, os.O_RDONLY))
            probe.unlink()
        except OSError as exc:
            raise OSError(exc.errno, f"results directory {self.dir} is not writable: {exc.strerror}. "
                          "Pass --results-dir to a writable directory with free space.") from exc
        return self

    def append(self, record: Record) -> None:
        """Append one record durably (one write, flock, fsync)."""
        line = (record.to_json() + "\n").encode()
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.records_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def records(self) -> list[Record]:
        """Every readable record of this run."""
        return read_records(self.records_path)

    def write_run_info(self, **extra: Any) -> Path:
        """Write (atomically replace) ``run.json``: run id, machine fingerprint and ``extra``."""
        path = self.dir / "run.json"
        info: dict[str, Any] = {}
        if path.exists():
            with contextlib.suppress(ValueError):
                info = json.loads(path.read_text())
        info.update({"run_id": self.run_id, "schema": SCHEMA_VERSION, **extra})
        info.setdefault("machine", machine_fingerprint())
        tmp = path.with_name(f".run.json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(_jsonable(info), indent=2, sort_keys=True))
        os.replace(tmp, path)
        return path


def read_records(path: str | Path) -> list[Record]:
    """Parse a records.jsonl; a line cut short by a crash is skipped with a warning."""
    path = Path(path)
    if path.is_dir():
        path = path / "records.jsonl"
    out: list[Record] = []
    if not path.exists():
        return out
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(Record.from_dict(json.loads(line)))
        except (ValueError, TypeError) as exc:
            warnings.warn(f"{path}:{number}: unreadable record skipped ({exc})", RuntimeWarning, stacklevel=2)
    return out


def iter_run_dirs(paths: list[str | Path]) -> Iterator[Path]:
    """Run directories under the given paths (a run dir itself, or a results dir holding runs)."""
    for p in map(Path, paths):
        if (p / "records.jsonl").exists() or (p / "run.json").exists():
            yield p
        elif p.is_dir():
            yield from sorted(d for d in p.iterdir() if (d / "records.jsonl").exists())


