"""Run one case in a spawned child process: crashes and hangs become statuses.

The parent (pytest, ``harness run``) never imports an engine SDK. It writes the
CaseRequest as JSON, starts ``python -m harness.worker REQUEST RESULT`` in a new
session (spawned, never forked: torch/OpenMP threads and fork do not mix), waits
with ``os.wait4`` and reads the Record JSON back:

* death by a signal (segfault, abort, the OOM killer) -> status ``crash`` with the
  signal's name and the tail of the child's output (faulthandler prints the
  Python stack of the crashing thread there);
* exceeding ``timeout_s`` -> SIGUSR1 (faulthandler dumps every thread's stack),
  then SIGKILL to the whole process group -> status ``timeout`` with that stack.

Memory is measured in the child: it resets the kernel's RSS high-water mark once
its imports are done and reads it after the case (``harness.memory``). The
parent adds the child's ``ru_maxrss`` from ``os.wait4`` as a cross-check, with
a caveat measured here: Linux starts an exec'd child's ``ru_maxrss`` at the
parent's own high-water mark (vfork), so it is only informative above
``parent_peak_rss_mb``, recorded beside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from harness.results import Record, machine_id
from harness.runner import CaseRequest
from harness.types import Precision, Status

TAIL_LINES = 25
DUMP_GRACE_S = 2.0
STARTUP_LIMIT_S = 300.0
CHILD_IMPORTS = ("numpy", "torch")  # what every case needs (the reference); imported before the baseline


def request_to_json(req: CaseRequest) -> str:
    """Serialize a CaseRequest (Precision is a str enum; tuples become lists)."""
    return json.dumps(dataclasses.asdict(req))


def request_from_json(text: str) -> CaseRequest:
    """Inverse of ``request_to_json``."""
    data = json.loads(text)
    data["precision"] = Precision(data["precision"])
    data["zoo_files"] = tuple(data.get("zoo_files", ()))
    return CaseRequest(**data)


# ---------------------------------------------------------------- parent side


def run_in_subprocess(case: CaseRequest, timeout_s: float = 600.0) -> Record:
    """Run ``case`` in a child process and return its record; never raises for engine faults.

    ``timeout_s`` limits the case itself: the clock starts when the child reports that
    its imports are done (interpreter and torch start-up are harness overhead, limited
    separately by ``max(timeout_s, STARTUP_LIMIT_S)``).
    """
    from harness.memory import child_peak_mb, peak_rss_mb

    started = time.time()
    parent_peak = round(peak_rss_mb(), 1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="harness-case-") as tmp:
        req_path, out_path, log_path = Path(tmp, "request.json"), Path(tmp, "record.json"), Path(tmp, "child.log")
        req_path.write_text(request_to_json(case))
        ready_r, ready_w = os.pipe()
        try:
            with log_path.open("wb") as log:
                proc = _spawn([sys.executable, "-m", "harness.worker", str(req_path), str(out_path), str(ready_w)],
                              log, ready_w)
        finally:
            os.close(ready_w)
        reaper, ready = _Reaper(proc), _Ready(ready_r)
        timed_out: str | None = None
        try:
            if not ready.wait(max(timeout_s, STARTUP_LIMIT_S)):
                timed_out = "startup"
            elif ready.at is not None and not reaper.wait(max(timeout_s - (time.perf_counter() - ready.at), 0)):
                timed_out = "case"
            if timed_out:
                _dump_stacks_and_kill(proc, reaper)
            reaper.wait(None)
        except BaseException:  # Ctrl-C or a pytest timeout in the parent: do not leave the child running
            _kill_group(proc)
            reaper.wait(None)
            raise
        end = time.perf_counter()
        wall_s = end - t0
        log_tail = _tail(log_path)
        record = _read_record(out_path) if not timed_out else None
    child_peak = round(child_peak_mb(reaper.rusage), 1) if reaper.rusage is not None else None
    if record is None:
        record = _failure_record(case, started, wall_s, reaper.status, timed_out, timeout_s, log_tail, child_peak)
    worker = {**record.extra.get("worker", {}), "wall_s": round(wall_s, 3),
              "case_s": round(end - ready.at, 3) if ready.at is not None else None,
              "overhead_s": round(wall_s - record.duration_s, 3), "ru_maxrss_mb": child_peak,
              "parent_peak_rss_mb": parent_peak}
    return dataclasses.replace(record, extra={**record.extra, "worker": worker})


def _spawn(argv: list[str], log: IO[bytes], ready_fd: int) -> subprocess.Popen[bytes]:
    root = str(Path(__file__).resolve().parent.parent)  # the child imports this same harness
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
           "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, pass_fds=(ready_fd,))


class _Ready:
    """Reads the child's one-byte "imports done" message; end of file means it exited first."""

    def __init__(self, fd: int) -> None:
        self.at: float | None = None
        self._done = threading.Event()
        threading.Thread(target=self._read, args=(fd,), name="case-ready", daemon=True).start()

    def _read(self, fd: int) -> None:
        try:
            if os.read(fd, 1):
                self.at = time.perf_counter()
        finally:
            os.close(fd)
            self._done.set()

    def wait(self, timeout_s: float) -> bool:
        """True once the child is ready or gone; False if ``timeout_s`` passed first."""
        return self._done.wait(timeout_s)


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


def _kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _dump_stacks_and_kill(proc: subprocess.Popen[bytes], waiter: _Reaper) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGUSR1)  # faulthandler: every thread's Python stack to the log
    waiter.wait(DUMP_GRACE_S)
    _kill_group(proc)
    waiter.wait(None)


def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last lines of the child's output; a faulthandler dump keeps its header (which thread, why)."""
    try:
        text = path.read_bytes()[-16384:].decode(errors="replace")
    except OSError:
        return ""
    keep = [ln for ln in text.splitlines() if ln.strip()]
    tail = keep[-lines:]
    headers = [ln for ln in keep[: len(keep) - len(tail)] if ln.startswith(_DUMP_HEADERS)]
    return "\n".join(([headers[-1], "  ..."] if headers else []) + tail)


_DUMP_HEADERS = ("Fatal Python error", "Current thread 0x", "Thread 0x")


def _read_record(path: Path) -> Record | None:
    try:
        return Record.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _failure_record(case: CaseRequest, started: float, wall_s: float, status: int | None, timed_out: str | None,
                    timeout_s: float, log_tail: str, child_peak: float | None) -> Record:
    """The record of a child that died, hung, or exited without writing its record."""
    from harness import backends

    try:
        backend = backends.canonical(case.backend)
    except Exception:  # an unknown name still gets its record
        backend = case.backend
    tail = f"; last output of the child:\n{log_tail}" if log_tail else "; the child printed nothing"
    sig = os.WTERMSIG(status) if status is not None and os.WIFSIGNALED(status) else None
    if timed_out == "startup":
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
        reason = f"the case's process exited with code {exit_code} without writing a record{tail}"
    return Record(run_id=case.run_id, model=case.model, backend=backend, precision=case.precision.value,
                  status=code.value, suite=case.suite, reason=reason, test_id=case.test_id or case.case_id,
                  machine_id=machine_id(), started_at=started, duration_s=round(wall_s, 3),
                  extra={"signal": signal.Signals(sig).name} if sig else {})


# ---------------------------------------------------------------- child side


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this child when its parent dies (Linux), so no case outlives a killed run."""
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def child_main(argv: Sequence[str]) -> int:
    """``python -m harness.worker REQUEST.json RESULT.json [READY_FD]``: run one case, write its record."""
    import faulthandler
    import importlib

    faulthandler.enable(all_threads=True)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    _die_with_parent()
    req_path, out_path = Path(argv[0]), Path(argv[1])
    ready_fd = int(argv[2]) if len(argv) > 2 else None
    t0 = time.perf_counter()
    from harness.memory import PeakRss
    from harness.runner import run_case

    for mod in CHILD_IMPORTS:
        importlib.import_module(mod)
    import_s = time.perf_counter() - t0
    req = request_from_json(req_path.read_text())
    if ready_fd is not None:  # the parent's per-case clock starts now
        os.write(ready_fd, b"R")
        os.close(ready_fd)
    with PeakRss() as mem:
        record = run_case(req)  # engine errors become statuses inside; only native faults get past it
        usage = mem.stop()
    extra = {**record.extra, "memory": {**record.extra.get("memory", {}), "case": usage.as_dict()},
             "worker": {"pid": os.getpid(), "import_s": round(import_s, 3)}}
    peak = record.peak_rss_mb if record.peak_rss_mb is not None else usage.delta_mb
    record = dataclasses.replace(record, peak_rss_mb=peak, extra=extra)
    tmp = out_path.with_suffix(".tmp")
    tmp.write_text(record.to_json())
    tmp.replace(out_path)
    return 0


# ---------------------------------------------------------------- `harness run`

CLI_MEASURE = {"min_time_s": 1.0, "min_iterations": 10, "warmup": 3}
CLI_BENCH = {"min_time_s": 5.0, "min_iterations": 50, "warmup": 10}


def run_one_cli(model: str, backend: str, precision: str, *, json_out: bool = False, in_process: bool = False,
                measure: bool = True, timeout_s: float = 600.0, threads: int | None = None,
                zoo_files: Sequence[str] = (), bench: bool = False, batches: Sequence[int] | None = None,
                out: IO[str] | None = None) -> int:
    """``harness run``: one case, printed as JSON or a summary; exit 0 for pass/fallback/xfail, else 1."""
    out = out or sys.stdout
    opts: dict[str, Any] | None = None
    if measure:
        opts = dict(CLI_BENCH if bench else CLI_MEASURE)
        if batches:
            opts["batches"] = [int(b) for b in batches]
    req = CaseRequest(model, backend, Precision.parse(precision), suite="cli", threads=threads,
                      zoo_files=tuple(str(Path(f).resolve()) for f in zoo_files), measure=opts)
    if in_process:
        from harness.runner import run_case

        record = run_case(req)
    else:
        record = run_in_subprocess(req, timeout_s=timeout_s)
    out.write((json.dumps(json.loads(record.to_json()), indent=2) if json_out else format_record(record)) + "\n")
    ok = {Status.PASS.value, Status.FALLBACK.value, Status.XFAIL.value}
    return 0 if record.status in ok else 1


def format_record(r: Record) -> str:
    """A few human-readable lines about one record."""
    lines = [f"{r.case_id}: {r.status}" + (f" ({r.reason})" if r.reason else "")]
    if r.executed_precision:
        lines.append(f"  executed: {r.executed_precision} ({r.precision_match})   engine: {r.backend} "
                     f"{r.backend_version}   threads: {r.settings.get('threads', '?')}")
    if r.metrics:
        lines.append("  error: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, int | float) else f"{k}={v}"
                                             for k, v in r.metrics.items()))
    if r.artifact:
        lines.append(f"  artifact: {r.artifact} ({r.artifact_mb} MB)")
    if r.latency:
        lat = r.latency
        flag = "  UNSTABLE" if lat.get("unstable") else ""
        lines.append(f"  latency: p50 {lat['p50_ms']:.3f} ms  p90 {lat['p90_ms']:.3f}  p99 {lat['p99_ms']:.3f}  "
                     f"mean {lat['mean_ms']:.3f}  cv {lat['cv']:.3f}  n={lat['n']}  batch={lat.get('batch')}{flag}")
    for t in r.throughput:
        lines.append(f"  throughput: batch {t['batch']}: {t['items_per_s']:.1f} items/s ({t['mode']})")
    if roof := r.extra.get("roofline"):
        lines.append(f"  roofline: {roof.get('gflops', 0):.3f} GFLOP/inference, {roof.get('achieved_gflop_s', 0):.1f}"
                     f" GFLOP/s, {roof.get('fraction_of_peak', float('nan')):.1%} of {roof.get('peak_gflop_s')}")
    if r.peak_rss_mb is not None:
        lines.append(f"  peak RSS: {r.peak_rss_mb} MB above the idle child")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
