"""The one child-process supervisor: every suite's cases run through ``run_in_subprocess``.

The parent (pytest, ``harness run``) runs no model: it starts ``python -m
harness.exec.child DIR MSG_FD`` in a new session and process group (spawned,
never forked: torch/OpenMP threads and fork do not mix). The child imports
numpy and torch, says "ready" on a pipe, then runs each ``DIR/case-N/request.json``
(a CaseRequest as JSON) named on its stdin through ``harness.run.case.run_case``,
writing ``DIR/case-N/record.json``. The parent reaps it with ``os.wait4``:

* death by a signal (segfault, abort, the OOM killer) -> status ``crash`` with the
  signal's name and the tail of the child's output (faulthandler prints the
  Python stack of the crashing thread there);
* exceeding ``timeout_s`` (counted from "ready" + request sent) -> SIGUSR1
  (faulthandler dumps every thread's stack), then SIGKILL to the whole process
  group -> status ``timeout`` with that stack.

No process outlives its case: the child kills what a case left running before
it reports the case done (``harness.exec.child.end_leftovers``), and discarding
a child SIGKILLs its process group and every process below it; after an unclean
end (crash, kill) its half-done ``.build-*`` cache builds are deleted too.

A fresh child costs about 2.5 s before its case starts (mostly ``import torch``),
more than a tiny model's whole case, so cases (conformance with its quick latency,
accuracy, ONNX operator cases) run one after another in the same child until it
crashes, times out, the environment changes (``PYTEST_CURRENT_TEST`` excepted), its
resident memory passes ``HARNESS_WORKER_MAX_RSS_MB`` (default 4096), or
``HARNESS_WORKER_CASES`` (default 2000) cases have run; ``HARNESS_WORKER_CASES=1``
gives every case a fresh child. Between cases the child restores torch's global
state, the environment and the working directory (``harness.exec.child``). An
isolated measurement (the perf suite, ``--bench``) always runs in a fresh child, alone.

Memory is measured in the child: it resets the kernel's RSS high-water mark once
its imports are done and reads it after the case (``harness.run.memory``). The
parent adds the child's ``ru_maxrss`` from ``os.wait4`` as a cross-check, with
a caveat measured here: Linux starts an exec'd child's ``ru_maxrss`` at the
parent's own high-water mark (vfork), so it is only informative above
``parent_peak_rss_mb``, recorded beside it.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.core.cache import cache_root
from harness.core.options import CaseRequest, request_to_json
from harness.core.record import Record
from harness.exec import outcome
from harness.exec.child import remove_stale_builds

DUMP_GRACE_S = 2.0
EXIT_GRACE_S = 2.0
REUSE_ENV = "HARNESS_WORKER_CASES"  # conformance cases one child may run in sequence; 1 = a fresh child per case
DEFAULT_CASES_PER_CHILD = 2000
MAX_RSS_ENV = "HARNESS_WORKER_MAX_RSS_MB"  # a reused child past this resident size is replaced
DEFAULT_MAX_RSS_MB = 4096.0
CHILD_ENV_DEFAULTS = {"ORT_DISABLE_TELEMETRY": "1"}  # ONNX Runtime's documented opt-out of its 1DS telemetry


# ---------------------------------------------------------------- parent side


def run_in_subprocess(case: CaseRequest, timeout_s: float = 600.0) -> Record:
    """Run ``case`` in a child process and return its record; never raises for engine faults.

    ``timeout_s`` limits the case itself: the clock starts when the child has finished its
    imports and received the request (interpreter and torch start-up are harness overhead,
    limited separately by ``max(timeout_s, outcome.STARTUP_LIMIT_S)``). An isolated measurement always
    gets a fresh child; other cases reuse the previous case's child while it is healthy (see the
    module docstring).
    """
    from harness.run.memory import child_peak_mb, peak_rss_mb

    started = time.time()
    parent_peak = round(peak_rss_mb(), 1)
    t0 = time.perf_counter()
    shared = case.measure is None or not case.measure.isolated  # only an isolated measurement needs a fresh child
    child = _IDLE.take(reusable=shared) or _Child()
    keep = False
    try:
        index = child.send(case)
        timed_out = child.wait(timeout_s)
        end = time.perf_counter()
        record = None if timed_out else outcome.read_record(child.case_dir(index) / "record.json")
        log_tail = outcome.tail(child.dir / "child.log") if record is None else ""
        keep = record is not None and shared and child.alive() and child.cases < _max_cases() and \
            _rss_mb(child.proc.pid) < float(os.environ.get(MAX_RSS_ENV, DEFAULT_MAX_RSS_MB))
    finally:
        if keep:
            _IDLE.put(child)
        else:
            child.discard()  # waits for the exit: a measured case never overlaps the previous child's teardown
    wall_s = time.perf_counter() - t0
    rusage = child.reaper.rusage
    child_peak = round(child_peak_mb(rusage), 1) if rusage is not None else None
    if record is None:
        record = outcome.failure_record(case, started, wall_s, child.reaper.status, timed_out, timeout_s, log_tail, child_peak)
    case_start = child.case_started_at
    worker = {**record.extra.get("worker", {}), "wall_s": round(wall_s, 3), "case_index": index,
              "case_s": round(end - case_start, 3) if case_start is not None else None,
              "overhead_s": round(wall_s - record.duration_s, 3), "ru_maxrss_mb": child_peak,
              "parent_peak_rss_mb": parent_peak}
    return dataclasses.replace(record, extra={**record.extra, "worker": worker})


def _rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (0 where /proc cannot tell: the count limit still applies)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def _max_cases() -> int:
    return max(int(os.environ.get(REUSE_ENV, DEFAULT_CASES_PER_CHILD)), 1)


VOLATILE_ENV = ("PYTEST_CURRENT_TEST",)
"""Variables that change between cases without changing what a child computes (pytest sets this per test)."""


def _env_key() -> tuple[str, str, tuple[tuple[str, str], ...]]:
    env = sorted((k, v) for k, v in os.environ.items() if k not in VOLATILE_ENV)
    return sys.executable, str(Path.cwd()), tuple(env)


class _Child:
    """One spawned ``python -m harness.exec.child`` with its own directory (requests, records, output log)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="harness-case-"))
        self.env_key = _env_key()
        self.cache = cache_root()  # where its half-done builds would be: the environment may change before discard
        self.cases = 0
        self.unclean = False  # it crashed or was killed: it may have left half-done builds
        self.sent_at: float | None = None
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
        self.reaper, self.messages = _Reaper(self.proc), _Messages(msg_r)
        self.ps = _ps_process(self.proc.pid)  # psutil's handle checks for pid reuse before it signals

    def case_dir(self, index: int) -> Path:
        return self.dir / f"case-{index}"

    @property
    def case_started_at(self) -> float | None:
        """When the current case's clock started: request sent and imports done."""
        if self.sent_at is None or self.messages.ready_at is None:
            return None
        return max(self.sent_at, self.messages.ready_at)

    def alive(self) -> bool:
        return not self.reaper.wait(0)

    def send(self, case: CaseRequest) -> int:
        """Hand a case to the child (it starts once its imports are done); returns the case's index."""
        index, self.cases = self.cases, self.cases + 1
        self.case_dir(index).mkdir()
        (self.case_dir(index) / "request.json").write_text(request_to_json(case))
        self.sent_at = time.perf_counter()
        with contextlib.suppress(OSError):  # a child that died already is reported by wait()
            assert self.proc.stdin is not None
            self.proc.stdin.write(f"{self.case_dir(index).name}\n".encode())
            self.proc.stdin.flush()
        return index

    def wait(self, timeout_s: float) -> str | None:
        """Wait for the current case; None when it ended by itself, else "startup" or "case" (killed)."""
        timed_out: str | None = None
        try:
            startup_left = max(timeout_s, outcome.STARTUP_LIMIT_S) - (time.perf_counter() - self.spawned_at)
            if not self.messages.wait_for(lambda m: m.ready_at is not None, startup_left):
                timed_out = "startup"
            elif (begin := self.case_started_at) is not None:
                left = timeout_s - (time.perf_counter() - begin)
                if not self.messages.wait_for(lambda m: m.done >= self.cases, left):
                    timed_out = "case"
            if timed_out:
                _dump_stacks_and_kill(self)
            if self.messages.closed:  # the child is gone (crash, kill): collect its exit status
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
        half-done builds it left in the cache."""
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        if not self.reaper.wait(EXIT_GRACE_S):
            self.unclean = True
        self.kill_tree()  # also after a clean exit: group members it could not end are still in its group
        self.reaper.wait(None)
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
        _kill_group(self.proc)
        for proc in below:
            with contextlib.suppress(psutil.Error):
                proc.kill()


class _IdleChild:
    """The one conformance child kept between cases (process-local; ended at interpreter exit)."""

    def __init__(self) -> None:
        self._child: _Child | None = None
        atexit.register(self.close)

    def take(self, *, reusable: bool) -> _Child | None:
        child, self._child = self._child, None
        if child is not None and (not reusable or not child.alive() or child.env_key != _env_key()):
            child.discard()  # a measured case, a dead child, or the environment changed (a test set a variable)
            return None
        return child

    def put(self, child: _Child) -> None:
        self.close()
        self._child = child

    def close(self) -> None:
        if self._child is not None:
            self._child.discard()
            self._child = None


_IDLE = _IdleChild()


class _Reaper:
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


class _Messages:
    """Reads the child's one-byte messages: "R" imports done, "D" one case done; end of file: it exited."""

    def __init__(self, fd: int) -> None:
        self.ready_at: float | None = None
        self.done = 0
        self.closed = False
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(fd,), name="case-messages", daemon=True).start()

    def _read(self, fd: int) -> None:
        try:
            while data := os.read(fd, 64):
                with self._cond:
                    for byte in data:
                        if byte == ord("R"):
                            self.ready_at = time.perf_counter()
                        elif byte == ord("D"):
                            self.done += 1
                    self._cond.notify_all()
        finally:
            os.close(fd)
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    def wait_for(self, condition: Callable[[_Messages], bool], timeout_s: float) -> bool:
        """True once ``condition(self)`` holds or the child is gone; False if ``timeout_s`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: condition(self) or self.closed, max(timeout_s, 0))


def _kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _dump_stacks_and_kill(child: _Child) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(child.proc.pid, signal.SIGUSR1)  # faulthandler: every thread's Python stack to the log
    child.reaper.wait(DUMP_GRACE_S)
    child.kill_tree()
    child.reaper.wait(None)


def _ps_process(pid: int) -> Any:
    import psutil

    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


