"""What a child process left behind, turned into a record: its record file, or the status of its death."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from harness.core.machine import machine_id
from harness.core.options import CaseRequest
from harness.core.record import Record
from harness.core.types import Cause, Status

TAIL_LINES = 25
"""Lines of a dead child's output kept in its record."""
STARTUP_LIMIT_S = 300.0
"""Seconds a child may take for its imports (at least the case's own limit)."""


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last lines of the child's output; a faulthandler dump keeps its header (which thread, why)."""
    try:
        text = path.read_bytes()[-16384:].decode(errors="replace")
    except OSError:
        return ""
    keep = [ln for ln in text.splitlines() if ln.strip()]
    last = keep[-lines:]
    headers = [ln for ln in keep[: len(keep) - len(last)] if ln.startswith(_DUMP_HEADERS)]
    return "\n".join(([headers[-1], "  ..."] if headers else []) + last)


_DUMP_HEADERS = ("Fatal Python error", "Current thread 0x", "Thread 0x")


def parse_record(text: str | None) -> Record | None:
    """The record a child sent (JSON), or None if it sent none or an unreadable one."""
    if text is None:
        return None
    try:
        return Record.from_dict(json.loads(text))
    except (ValueError, TypeError):
        return None


def failure_record(case: CaseRequest, started: float, wall_s: float, status: int | None, timed_out: str | None,
                    timeout_s: float, log_tail: str, child_peak: float | None) -> Record:
    """The record of a child that died, hung, or exited without writing its record."""
    from harness.run.case import canonical_backend

    backend = canonical_backend(case.backend)
    tail = f"; last output of the child:\n{log_tail}" if log_tail else "; the child printed nothing"
    sig = os.WTERMSIG(status) if status is not None and os.WIFSIGNALED(status) else None
    cause = Cause.ENGINE  # native code died or hung while the case ran: the engine's (or torch's) code
    if timed_out == "startup":
        cause = Cause.HARNESS
        code, reason = Status.TIMEOUT, (f"the case's process did not finish its imports within "
                                        f"{max(timeout_s, STARTUP_LIMIT_S):g} s; it was killed{tail}")
    elif timed_out:
        code, reason = Status.TIMEOUT, (f"exceeded the per-case time limit of {timeout_s:g} s (--case-timeout); "
                                        f"the child's process group was killed{tail}")
    elif sig is not None:
        name = signal.Signals(sig).name
        hint = (" (not sent by the harness: likely the kernel's OOM killer; "
                f"child ru_maxrss {child_peak} MB)") if sig == signal.SIGKILL else ""
        code, reason = Status.CRASH, f"the case's process was killed by {name} (signal {sig}){hint}{tail}"
    else:
        exit_code = os.waitstatus_to_exitcode(status) if status is not None else None
        # a Python traceback means the worker itself failed (a harness fault); else native code exited
        code = Status.ERROR if "Traceback (most recent call last)" in log_tail else Status.CRASH
        cause = Cause.HARNESS if code is Status.ERROR else Cause.ENGINE
        reason = f"the case's process exited with code {exit_code} without writing a record{tail}"
    return Record(run_id=case.run_id, model=case.model, backend=backend, precision=case.precision.value,
                  status=code.value, suite=case.suite, reason=reason, cause=cause.value,
                  test_id=case.test_id or case.case_id, machine_id=machine_id(), started_at=started,
                  duration_s=round(wall_s, 3),
                  extra={"signal": signal.Signals(sig).name} if sig else {})
