"""The child process of the supervisor: imports once, then runs the cases it is handed."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from harness.core.options import CaseRequest, request_from_json
from harness.core.record import Record


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this child when its parent dies (Linux), so no case outlives a killed run."""
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


@contextlib.contextmanager
def _isolated() -> Iterator[None]:
    """Undo what a case can leave behind for the next case in a reused child: process-global torch state
    (default dtype, grad mode, threads), environment variables and the working directory."""
    import torch

    dtype, grad, threads = torch.get_default_dtype(), torch.is_grad_enabled(), torch.get_num_threads()
    env, cwd = dict(os.environ), os.getcwd()
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(grad)
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)


def child_main(argv: Sequence[str]) -> int:
    """``python -m harness.exec.child DIR MSG_FD DIE_WITH_PARENT``: import, say "R" on MSG_FD, then for each
    line ``case-N`` on stdin run ``DIR/case-N/request.json``, write ``DIR/case-N/record.json`` and say "D".
    End of stdin: exit."""
    import faulthandler
    import importlib

    faulthandler.enable(all_threads=True)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    work, msg_fd = Path(argv[0]), int(argv[1])
    if argv[2:3] == ["1"]:
        _die_with_parent()
    t0 = time.perf_counter()
    from harness.run.case import run_case

    for mod in CHILD_IMPORTS:
        importlib.import_module(mod)
    import_s = round(time.perf_counter() - t0, 3)
    os.write(msg_fd, b"R")
    index = 0
    while line := sys.stdin.buffer.readline():
        case_dir = work / line.decode().strip()
        with _isolated():
            record = _run_measured(run_case, request_from_json((case_dir / "request.json").read_text()))
        worker = {"pid": os.getpid(), "import_s": import_s if index == 0 else 0.0, "reused": index > 0}
        record = dataclasses.replace(record, extra={**record.extra, "worker": worker})
        tmp = case_dir / "record.json.tmp"
        tmp.write_text(record.to_json())
        tmp.replace(case_dir / "record.json")
        os.write(msg_fd, b"D")
        index += 1
    return 0


def _run_measured(run_case: Callable[[CaseRequest], Record], req: CaseRequest) -> Record:
    """``run_case`` with the process's RSS high-water mark reset first: the case's own peak memory."""
    from harness.run.memory import PeakRss

    if req.measure is not None:
        from harness.run.perf import warm_flops_cache

        warm_flops_cache(req)
    with PeakRss() as mem:
        record = run_case(req)  # engine errors become statuses inside; only native faults get past it
        usage = mem.stop()
    memory = {**record.extra.get("memory", {}), "child": usage.as_dict()}
    peak = record.peak_rss_mb if record.peak_rss_mb is not None else usage.delta_mb
    return dataclasses.replace(record, peak_rss_mb=peak, extra={**record.extra, "memory": memory})


CHILD_IMPORTS = ("numpy", "torch")  # what every case needs (the reference); imported before the baseline


if __name__ == "__main__":
    code = child_main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # records are on disk; skipping interpreter teardown (0.65 s with torch loaded) is safe
