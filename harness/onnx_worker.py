"""A long-lived child process that runs ONNX conformance cases one after another.

Why not ``harness.worker.run_in_subprocess`` (one child per case): a fresh
interpreter importing an engine costs 1.5-3 s here, which for ~2,000 node cases
per engine is over an hour of start-up alone, while the whole ONNX Runtime
sweep runs in about 2 minutes in one process. Why not the pytest process: an
engine that segfaults or hangs on one malformed node would end the session.
So each backend gets one spawned child that serves cases over a pipe; when it
dies (signal, abort) the case in flight becomes ``crash``, when it exceeds the
time limit it is killed and the case becomes ``timeout``, and the next case
starts a fresh child. The child calls ``harness.onnx_cases.run_onnx_case``,
the same function the in-process path calls.
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.onnx_cases import SUITE, OnnxCase, run_onnx_case
from harness.results import Record, machine_id
from harness.types import Precision, Status


def _serve(conn: Any, runner: Callable[..., Record]) -> None:
    """Child loop: receive ``(case dict, backend, options)``, send back the record's JSON; stop on ``None``."""
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        case, backend, options = msg
        conn.send(runner(OnnxCase.from_dict(case), backend, **options).to_json())


class CaseWorker:
    """One spawned child running cases sequentially; a crash or hang costs one case and a restart.

    ``runner`` is what the child calls per case (a module-level function: it is pickled by name);
    ``run_onnx_case`` except in the fault-handling tests.
    """

    def __init__(self, timeout_s: float = 600.0, runner: Callable[..., Record] = run_onnx_case) -> None:
        self.timeout_s = timeout_s
        self.runner = runner
        self.restarts = 0
        """Children lost to a crash or a timeout so far."""
        self._proc: Any = None
        self._conn: Any = None

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold engine threads
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(child, self.runner), daemon=True, name="onnx-case-worker")
        proc.start()  # a script calling this needs the ``if __name__ == "__main__":`` guard (spawn re-imports it)
        child.close()
        self._proc, self._conn = proc, parent

    def run(self, case: OnnxCase, backend: str, *, run_id: str = "adhoc", threads: int | None = None,
            root: Path | None = None, test_id: str = "") -> Record:
        """Run one case in the child; its death or a timeout becomes the case's status."""
        if self._proc is None or not self._proc.is_alive():
            self._start()
        options = {"run_id": run_id, "threads": threads, "root": root, "test_id": test_id}
        started = time.time()
        try:
            self._conn.send((case.as_dict(), backend, options))
            if self._conn.poll(self.timeout_s):
                return Record.from_dict(json.loads(self._conn.recv()))
            status, reason = Status.TIMEOUT, f"no result after {self.timeout_s:g} s; the worker was killed"
            self._proc.kill()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            status, reason = Status.CRASH, "the worker process died"
        self._proc.join(5)
        code = self._proc.exitcode
        if status is Status.CRASH and code is not None:
            reason += f" ({signal.Signals(-code).name})" if code < 0 else f" (exit code {code})"
        self._proc = None
        self.restarts += 1  # the next case starts a fresh child
        return _failure(case, backend, run_id, test_id, started, status, f"{backend} on {case.id}: {reason}")

    def close(self) -> None:
        """Stop the child (it exits when told; killed if it does not within 5 s)."""
        if self._proc is None or self._conn is None:
            return
        try:
            self._conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._proc = None

    def __enter__(self) -> CaseWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _failure(case: OnnxCase, backend: str, run_id: str, test_id: str, started: float, status: Status,
             reason: str) -> Record:
    base = Record(run_id=run_id, model=case.id, backend=backend, precision=Precision.FP32.value, status=status.value,
                  suite=SUITE, reason=reason, test_id=test_id or f"{case.id}-{backend}", machine_id=machine_id(),
                  started_at=started,
                  extra={"op_types": list(case.op_types), "opset": case.opset, "case_set": case.case_set})
    return replace(base, duration_s=round(time.time() - started, 3))
