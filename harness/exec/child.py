"""The child process of the supervisor: imports once, then runs the cases it is handed."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from harness.core.options import CaseRequest, request_from_json
from harness.core.record import Record

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
LEFTOVER_WAIT_S = 5.0


def _prctl(option: int, value: int) -> None:
    with contextlib.suppress(Exception):  # Linux only; elsewhere the feature is simply absent
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(option, value)


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this child when its parent dies (Linux), so no case outlives a killed run."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _adopt_orphans() -> None:
    """Become a child subreaper (Linux): a process a case detaches (double fork, ``setsid``) is re-parented to
    this child instead of init, so ``end_leftovers`` still finds it among this process's descendants."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def end_leftovers(wait_s: float = LEFTOVER_WAIT_S) -> list[str]:
    """Kill (SIGKILL) and reap every process still running below this one; return them as ``"pid name"``.

    Run after each case of a reused child: whatever the case started and left running (a model's forward
    that forks, an engine's helper process) must not outlive it, hold its files or CPU, or pile up over
    the hundreds of cases one child runs. Repeated until none is left, since a process may fork while the
    first round is being killed.
    """
    if has_children() is False:  # the common case, answered without psutil's scan of all of /proc
        return []
    import psutil

    me, ended = psutil.Process(), []
    for _ in range(5):
        procs = me.children(recursive=True)
        if not procs:
            break
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                if proc.status() != psutil.STATUS_ZOMBIE:  # a zombie has ended already: only reaped below
                    ended.append(f"{proc.pid} {proc.name()}")
                proc.kill()
        psutil.wait_procs(procs, timeout=wait_s)
        _reap_adopted()
    return ended


def has_children() -> bool | None:
    """Whether any process runs below this one, from ``/proc/self/task/*/children`` (Linux 3.5+): the
    children of each of its threads (orphans a case detached are among them: this process is their
    subreaper), zombies included. None where the kernel does not offer these files (psutil must look)."""
    try:
        tasks = os.listdir("/proc/self/task")  # noqa: PTH208 (names only, per case: the cheapest call)
    except OSError:
        return None
    answered = False
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children", "rb") as f:
                if f.read().strip():
                    return True
            answered = True
        except OSError:  # the thread ended meanwhile, or no such file (CONFIG_PROC_CHILDREN off)
            continue
    return False if answered else None


def _reap_adopted() -> None:
    """Collect the exit status of adopted orphans (subreaper) that psutil did not wait for."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def remove_stale_builds(root: Path) -> list[Path]:
    """Delete the ``.build-*`` directories under the artifact cache whose builders are gone; return them.

    A builder holds its artifact's ``<name>.lock`` (flock) for the whole life of its ``.build-*``
    directory (``harness.core.cache.cached``). Directories are listed before the locks are tried, so
    where no lock beside them is held, every listed build directory belongs to a builder that is gone;
    where one is held (a live build of the same model), they are left for a later sweep.
    """
    import fcntl

    def held(lock: Path) -> bool:
        try:
            with lock.open("a") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released on close
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False

    removed: list[Path] = []
    for dirpath, dirnames, _ in os.walk(root):
        builds = [Path(dirpath, d) for d in dirnames if d.startswith(".build-")]
        dirnames[:] = [d for d in dirnames if not d.startswith(".build-")]
        if builds and not any(held(lock) for lock in Path(dirpath).glob("*.lock")):
            for build in builds:
                shutil.rmtree(build, ignore_errors=True)
                removed.append(build)
    return removed


@contextlib.contextmanager
def _isolated(req: CaseRequest) -> Iterator[None]:
    """Undo what a case can leave behind for the next case in a reused child: process-global torch state
    (default dtype, grad mode, threads), environment variables and the working directory.

    A child that runs only ONNX test cases never imports torch (1.4 s of start-up): see ``preload``.
    """
    if "torch" in sys.modules:
        import torch

        state = torch.get_default_dtype(), torch.is_grad_enabled(), torch.get_num_threads()
    else:
        state = None
    env, cwd = environ_snapshot(), Path.cwd()
    try:
        yield
    finally:
        if "torch" in sys.modules:
            import torch

            dtype, grad, threads = state or (torch.float32, True, torch.get_num_threads())
            torch.set_default_dtype(dtype)
            torch.set_grad_enabled(grad)
            torch.set_num_threads(threads)
            if "torch._dynamo" in sys.modules:  # dynamo's compiled-code caches and guards from a case's export
                torch._dynamo.reset()  # (the LSTM export once blamed on it: harness.model.export.fresh_rnn_dispatch)
        if environ_snapshot() != env:  # comparing is ~10x cheaper than clearing and refilling (unsetenv each)
            restore_environ(env)
        os.chdir(cwd)


def environ_snapshot() -> dict[Any, Any]:
    """The environment as a dict to compare and restore: CPython's encoded mapping behind ``os.environ``
    where it has one (copied and compared at C speed; ``dict(os.environ)`` decodes every variable, 0.1-0.3 ms
    a case), else the decoded one. Restore with ``restore_environ``."""
    raw = getattr(os.environ, "_data", None)
    return dict(raw) if isinstance(raw, dict) else dict(os.environ)


def restore_environ(snapshot: dict[Any, Any]) -> None:
    """Make ``os.environ`` equal to an ``environ_snapshot()`` again."""
    os.environ.clear()
    os.environ.update({os.fsdecode(k): os.fsdecode(v) for k, v in snapshot.items()})


def preload(req: CaseRequest) -> float:
    """``harness.run.case.preload`` (imports and the engine's one-time start-up, before the case's memory
    baseline); returns the seconds spent: start-up, not case time."""
    from harness.run.case import preload as preload_case

    t0 = time.perf_counter()
    preload_case(req)
    return time.perf_counter() - t0


def child_main(argv: Sequence[str]) -> int:
    """``python -m harness.exec.child DIR MSG_FD DIE_WITH_PARENT``: import, say "R" on MSG_FD, then for each
    line on stdin (a CaseRequest as JSON) say "S", run it and send "D", the record's length (4 bytes, little
    endian) and the record as JSON. No file per case: output goes to the parent's ``DIR/child.log``.
    End of stdin: exit."""
    import faulthandler
    import importlib

    faulthandler.enable(all_threads=True)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    msg_fd = int(argv[1])
    if argv[2:3] == ["1"]:
        _die_with_parent()
    _adopt_orphans()
    t0 = time.perf_counter()
    from harness.run.case import run_case

    importlib.import_module("numpy")  # what every case needs; torch comes with the first case that uses it
    import_s = time.perf_counter() - t0  # start-up paid by the next case: imports (and torch, when it comes)
    os.write(msg_fd, b"R")
    index = 0
    while line := sys.stdin.buffer.readline():
        os.write(msg_fd, b"S")  # the case's time limit starts now
        req = request_from_json(line.decode())
        import_s += preload(req)
        with _isolated(req):
            record = _run_measured(run_case, req)
        leftovers = end_leftovers()  # before "D": the next case, or the parent's next look, finds none
        worker = {"pid": os.getpid(), "import_s": round(import_s, 3), "reused": index > 0,
                  **({"killed_leftovers": leftovers} if leftovers else {})}
        record = dataclasses.replace(record, extra={**record.extra, "worker": worker})
        import_s = 0.0
        payload = record.to_json().encode()
        _write_all(msg_fd, b"D" + len(payload).to_bytes(4, "little") + payload)
        index += 1
    return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _run_measured(run_case: Callable[[CaseRequest], Record], req: CaseRequest) -> Record:
    """``run_case`` with the process's RSS high-water mark reset first: the case's own peak memory."""
    from harness.core.cache import on_build
    from harness.run.memory import PeakRss, release_freed_memory

    if req.measure is not None:
        from harness.run.roofline import warm_flops_cache

        warm_flops_cache(req)
    release_freed_memory()
    built: list[Path] = []  # artifacts this case built (a cold cache): its peak includes building them
    with PeakRss() as mem, on_build(built.append):
        record = run_case(req)  # engine errors become statuses inside; only native faults get past it
        usage = mem.stop()
    memory = {**record.extra.get("memory", {}), "child": usage.as_dict(),
              **({"built": [p.name for p in built]} if built else {})}
    ran = record.status not in ("skipped", "unsupported")  # a case that never ran has no memory figure
    peak = record.peak_rss_mb if record.peak_rss_mb is not None else (usage.delta_mb if ran else None)
    return dataclasses.replace(record, peak_rss_mb=peak, extra={**record.extra, "memory": memory})


if __name__ == "__main__":
    code = child_main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # records are on disk; skipping interpreter teardown (0.65 s with torch loaded) is safe
