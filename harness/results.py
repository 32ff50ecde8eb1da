"""Records and the append-only, crash-safe result store.

One JSON line per finished case in ``<results-dir>/<run-id>/records.jsonl``:
each line is appended under an exclusive ``flock`` and ``fsync``-ed, so
concurrent writers (xdist workers, case subprocesses) never interleave.
A line that does not reach the disk whole (disk full, quota) raises OSError
and is cut off again; if even that fails, the next append first ends the
fragment with a newline so no later record is glued to it. A killed session
loses at most the line being written, which readers skip with a warning.
Earlier lines are never rewritten.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.core.machine import machine_fingerprint
from harness.core.record import SCHEMA_VERSION, Record, _jsonable, json_type

RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A run id is one plain directory name: it must not climb out of the results directory."""


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a short random suffix."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a plain directory name; raise ValueError saying what is allowed if not."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id) or ".." in run_id:
        raise ValueError(f"run id {run_id!r} is not a plain name: a run id becomes a directory under the results "
                         "directory, so it may hold only letters, digits, '.', '_' and '-' (no '/', no '..', at most "
                         "128 characters, starting with a letter or digit), e.g. nightly-1234-ort-1of2")
    return run_id


class ResultStore:
    """The records and metadata of one run under ``<results_dir>/<run_id>/``."""

    def __init__(self, results_dir: str | Path, run_id: str | None = None) -> None:
        self.run_id = check_run_id(run_id) if run_id is not None else new_run_id()
        self.dir = Path(results_dir) / self.run_id
        self.records_path = self.dir / "records.jsonl"

    def prepare(self) -> ResultStore:
        """Create the run directory and prove it is writable; raise OSError with a clear message if not."""
        probe = self.dir / f".write-probe-{os.getpid()}"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"x" * 4096)
            fd = os.open(probe, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise OSError(exc.errno, f"results directory {self.dir} is not writable: {exc.strerror}. "
                          "Pass --results-dir to a writable directory with free space.") from exc
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
        return self

    def append(self, record: Record) -> None:
        """Append one record durably (flock, every byte written, fsync); raise OSError if it did not reach the disk.

        On failure the partial line is truncated away, so the file ends with whole records as before.
        """
        line = (record.to_json() + "\n").encode()
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.records_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            start = os.fstat(fd).st_size
            # A fragment of an earlier failed or killed write: end it so this record starts on its own line.
            if start and os.pread(fd, 1, start - 1) != b"\n":
                line = b"\n" + line
            try:
                _write_all(fd, line)
                os.fsync(fd)
            except OSError as exc:
                raise self._unwritten(fd, start, record, exc) from exc
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _unwritten(self, fd: int, start: int, record: Record, exc: OSError) -> OSError:
        try:
            os.ftruncate(fd, start)
            os.fsync(fd)
            left = "the partial line was removed"
        except OSError as again:
            left = (f"the partial line could not be removed ({again.strerror}); readers skip it and the next append "
                    "starts on a new line")
        return OSError(exc.errno, f"record of {record.case_id} was not written to {self.records_path}: "
                       f"{exc.strerror or exc}; {left}. Free space (or pass --results-dir elsewhere) and re-run "
                       "this case: its result is lost.")

    def records(self) -> list[Record]:
        """Every readable record of this run."""
        return read_records(self.records_path)

    def write_run_info(self, **extra: Any) -> Path:
        """Write (atomically replace) ``run.json``: run id, machine fingerprint and ``extra``.

        Raises OSError (leaving the previous run.json and no temporary file) when it cannot be written.
        """
        path = self.dir / "run.json"
        info = read_run_info(path)
        info.update({"run_id": self.run_id, "schema": SCHEMA_VERSION, **extra})
        if not isinstance(info.get("machine"), dict):
            info["machine"] = machine_fingerprint()
        try:
            write_file_atomic(path, json.dumps(_jsonable(info), indent=2, sort_keys=True).encode())
        except OSError as exc:
            raise OSError(exc.errno, f"{path} was not written: {exc.strerror or exc}; the records in "
                          f"{self.records_path} are unaffected. Free space and re-run `harness report` "
                          "if a report is missing.") from exc
        return path


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written: a short count is not an error by itself, zero progress is."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, f"no progress writing {len(view)} of {len(data)} bytes "
                          f"({os.strerror(errno.ENOSPC)})")
        view = view[n:]


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it and rename it over ``path``.

    Whatever fails (disk full, permissions, ``path`` is a directory), the temporary file is removed
    and the OSError propagates; ``path`` is either the old file or the whole new one.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def read_run_info(path: str | Path) -> dict[str, Any]:
    """The mapping in a run.json; {} (with a warning) when it is missing, unreadable or not a JSON object."""
    path = Path(path)
    if path.is_dir():
        path = path / "run.json"
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        warnings.warn(f"{path}: unreadable run.json ignored ({exc})", RuntimeWarning, stacklevel=2)
        return {}
    try:
        info = json.loads(text)
    except ValueError as exc:
        warnings.warn(f"{path}: run.json is not valid JSON, ignored ({exc})", RuntimeWarning, stacklevel=2)
        return {}
    if not isinstance(info, dict):
        warnings.warn(f"{path}: run.json holds a JSON {json_type(info)}, not an object; ignored",
                      RuntimeWarning, stacklevel=2)
        return {}
    return info


def read_records(path: str | Path) -> list[Record]:
    """Parse a records.jsonl; a line that is not a valid record is skipped with a warning naming file and line."""
    path = Path(path)
    if path.is_dir():
        path = path / "records.jsonl"
    out: list[Record] = []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return out
    for number, raw in enumerate(data.split(b"\n"), 1):
        line = raw.decode("utf-8", errors="replace")
        if not line.strip():
            continue
        try:
            parsed = json.loads(line)
            if not isinstance(parsed, dict):
                raise TypeError(f"a JSON {json_type(parsed)}, not an object")
            out.append(Record.from_dict(parsed))
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            warnings.warn(f"{path}:{number}: unreadable record skipped ({str(exc)[:200]})", RuntimeWarning,
                          stacklevel=2)
    return out


def iter_run_dirs(paths: list[str | Path]) -> Iterator[Path]:
    """Run directories under the given paths (a run dir itself, or a results dir holding runs)."""
    for p in map(Path, paths):
        if (p / "records.jsonl").exists() or (p / "run.json").exists():
            yield p
        elif p.is_dir():
            yield from sorted(d for d in p.iterdir() if (d / "records.jsonl").exists())
