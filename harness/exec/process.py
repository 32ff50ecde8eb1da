"""One spawned case child as the supervisor sees it: its queue of handed-over cases, its messages, its end.

``Child`` starts ``python -m harness.exec.child DIR MSG_FD`` (see ``harness.exec.supervisor`` for the
policy: reuse, prefetch, crash and hang handling) and keeps, in order, the cases handed to it and not yet
collected (``pending``). Requests go down its stdin, one JSON line each; the child reports on its
message pipe: "R" imports done, "S" a case started, "D" a case done with its record. Each message is
time-stamped here, so a case's time limit counts from its own start even when it was queued behind others.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.cache import cache_root
from harness.core.options import CaseRequest, request_to_json
from harness.exec import outcome
from harness.exec.child import environ_snapshot, remove_stale_builds

DUMP_GRACE_S = 2.0
EXIT_GRACE_S = 2.0
CHILD_ENV_DEFAULTS = {"ORT_DISABLE_TELEMETRY": "1"}  # ONNX Runtime's documented opt-out of its 1DS telemetry
VOLATILE_ENV = ("PYTEST_CURRENT_TEST",)
"""Variables that change between cases without changing what a child computes (pytest sets this per test)."""


def env_key() -> tuple[str, str, dict[Any, Any]]:
    """What a child was started with: a child started under another interpreter, directory or environment
    computes other things."""
    env = environ_snapshot()
    for name in VOLATILE_ENV:
        env.pop(name, None)
        env.pop(os.fsencode(name), None)
    return sys.executable, str(Path.cwd()), env


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (0 where /proc cannot tell: the count limit still applies)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


@dataclass(frozen=True)
class Entry:
    """One case handed to a child: its position in the child's sequence, the request and its time limit."""

    index: int
    case: CaseRequest
    timeout_s: float
    sent_at: float
    prefetched: bool


class Child:
    """One spawned ``python -m harness.exec.child`` with its own directory (requests, records, output log)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="harness-case-"))
        self.env_key = env_key()
        self.cache = cache_root()  # where its half-done builds would be: the environment may change before discard
        self.cases = 0
        self.pending: list[Entry] = []
        self.unclean = False  # it crashed or was killed: it may have left half-done builds
        self.spawned_at = time.perf_counter()
        root = str(Path(__file__).resolve().parent.parent)  # the child imports this same harness
        env = {**CHILD_ENV_DEFAULTS, **os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        # PR_SET_PDEATHSIG fires when the spawning *thread* exits: only ask for it from the main thread
        die_with_parent = "1" if threading.current_thread() is threading.main_thread() else "0"
        msg_r, msg_w = os.pipe()
        try:
            with (self.dir / "child.log").open("wb") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "harness.exec.child", str(self.dir), str(msg_w), die_with_parent],
                    stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                    pass_fds=(msg_w,))
        finally:
            os.close(msg_w)
        self.reaper, self.messages = Reaper(self.proc), Messages(msg_r)
        self.ps = _ps_process(self.proc.pid)  # psutil's handle checks for pid reuse before it signals

    def alive(self) -> bool:
        return not self.reaper.wait(0)

    def find(self, case: CaseRequest) -> Entry | None:
        """The pending entry whose request equals ``case`` (a prefetched one), if any."""
        return next((e for e in self.pending if e.case == case), None)

    def send(self, case: CaseRequest, timeout_s: float, *, prefetched: bool = False) -> Entry:
        """Queue a case in the child (it starts once its imports and the cases before it are done)."""
        index, self.cases = self.cases, self.cases + 1
        entry = Entry(index, case, timeout_s, time.perf_counter(), prefetched)
        self.pending.append(entry)
        with contextlib.suppress(OSError):  # a child that died already is reported by finish()
            assert self.proc.stdin is not None
            self.proc.stdin.write(request_to_json(case).encode() + b"\n")  # one line: JSON escapes newlines
            self.proc.stdin.flush()
        return entry

    def record_text(self, index: int) -> str | None:
        """The record case ``index`` sent with its "D" (JSON), if it did."""
        records = self.messages.records
        return records[index] if index < len(records) else None

    def started_at(self, index: int) -> float | None:
        """When the child started case ``index`` (its "S"), if it has."""
        starts = self.messages.starts
        return starts[index] if index < len(starts) else None

    def finish(self, entry: Entry) -> str | None:
        """Wait for ``entry``'s case (the cases before it must be finished already); None when it ended by
        itself or the child died, else "startup" or "case" (the child was killed for overrunning).

        The time limit counts from the case's start ("S"); a case not started within its limit of the end of
        the one before it (or of the imports) counts as overrunning too.
        """
        timed_out: str | None = None
        m = self.messages
        try:
            startup_left = max(entry.timeout_s, outcome.STARTUP_LIMIT_S) - (time.perf_counter() - self.spawned_at)
            if not m.wait_for(lambda m: m.ready_at is not None, startup_left):
                timed_out = "startup"
            else:
                before = m.dones[entry.index - 1] if 0 < entry.index <= len(m.dones) else 0.0
                queued = max(entry.sent_at, m.ready_at or 0.0, before)
                queue_left = entry.timeout_s - (time.perf_counter() - queued)
                if not m.wait_for(lambda m: len(m.starts) > entry.index, queue_left):
                    timed_out = "case"
                elif (begin := self.started_at(entry.index)) is not None:
                    left = entry.timeout_s - (time.perf_counter() - begin)
                    if not m.wait_for(lambda m: len(m.dones) > entry.index, left):
                        timed_out = "case"
            if timed_out:
                self._dump_stacks_and_kill()  # reaps it; the message reader may not have seen the pipe close yet
            if timed_out or m.closed:  # the child is gone (crash, kill): collect its exit status
                self.unclean = True
                self.reaper.wait(None)
        except BaseException:  # Ctrl-C or a pytest timeout in the parent: do not leave the child running
            self.unclean = True
            self.discard()
            raise
        return timed_out

    def discard(self) -> None:
        """End the child: end of stdin, then SIGKILL to its process group and every process below it (whatever
        a crashed or killed child left running); reap it; delete its directory and, after an unclean end, the
        half-done builds it left in the cache. Cases still queued (prefetched, never collected) are not waited
        for: the child is killed at once, and counts as unclean only if it was inside a case."""
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        if self.pending:
            self.kill_tree()
            self.reaper.wait(None)
            self.messages.wait_for(lambda m: False, EXIT_GRACE_S)  # every message the child sent is read
            self.unclean = self.unclean or len(self.messages.starts) > len(self.messages.dones)
        elif not self.reaper.wait(EXIT_GRACE_S):
            self.unclean = True
        self.kill_tree()  # also after a clean exit: group members it could not end are still in its group
        self.reaper.wait(None)
        self.pending = []
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.unclean:
            remove_stale_builds(self.cache)

    def kill_tree(self) -> None:
        """SIGKILL the child's process group and every process below the child (also those that left its group:
        listed first, while the child is alive to be their ancestor)."""
        import psutil

        below = []
        if self.ps is not None and not self.reaper.wait(0):  # once reaped, its pid may name another process
            with contextlib.suppress(psutil.Error):
                below = self.ps.children(recursive=True)
        # the group outlives its leader while members remain; its id is not reused while any member exists
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for proc in below:
            with contextlib.suppress(psutil.Error):
                proc.kill()

    def _dump_stacks_and_kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGUSR1)  # faulthandler: every thread's Python stack to the log
        self.reaper.wait(DUMP_GRACE_S)
        self.kill_tree()
        self.reaper.wait(None)


class Reaper:
    """Reaps the child with ``os.wait4`` in a thread, keeping its exit status and resource usage."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.status: int | None = None
        self.rusage: Any = None
        self._thread = threading.Thread(target=self._reap, name=f"reap-{proc.pid}", daemon=True)
        self._thread.start()

    def _reap(self) -> None:
        _, status, self.rusage = os.wait4(self.proc.pid, 0)
        self.status = status
        self.proc.returncode = os.waitstatus_to_exitcode(status)

    def wait(self, timeout_s: float | None) -> bool:
        """True once the child has been reaped; False if ``timeout_s`` passed first."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


class Messages:
    """Reads the child's messages: "R" imports done, "S" a case started, "D" + 4-byte length + JSON: a case
    done and its record (each time-stamped, in case order); end of file: it exited. A record cut short by
    the child's death does not count as done."""

    def __init__(self, fd: int) -> None:
        self.ready_at: float | None = None
        self.starts: list[float] = []
        self.dones: list[float] = []
        self.records: list[str] = []
        self.closed = False
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(fd,), name="case-messages", daemon=True).start()

    def _read(self, fd: int) -> None:
        buf = bytearray()
        try:
            while data := os.read(fd, 1 << 16):
                now = time.perf_counter()
                buf += data
                with self._cond:
                    while buf:
                        kind = buf[0]
                        if kind == ord("D"):
                            if len(buf) < 5 or len(buf) < 5 + (size := int.from_bytes(buf[1:5], "little")):
                                break  # the rest of the record is still on its way
                            self.records.append(buf[5:5 + size].decode())
                            self.dones.append(now)
                            del buf[:5 + size]
                            continue
                        if kind == ord("R"):
                            self.ready_at = now
                        elif kind == ord("S"):
                            self.starts.append(now)
                        del buf[:1]
                    self._cond.notify_all()
        finally:
            os.close(fd)
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    def wait_for(self, condition: Callable[[Messages], bool], timeout_s: float) -> bool:
        """True once ``condition(self)`` holds or the child is gone; False if ``timeout_s`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: condition(self) or self.closed, max(timeout_s, 0))


def _ps_process(pid: int) -> Any:
    import psutil

    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None
