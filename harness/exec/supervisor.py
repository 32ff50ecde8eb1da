"""The one child-process supervisor: every suite's cases run through ``run_in_subprocess``.

The parent (pytest, ``harness run``) runs no model: it starts ``python -m
harness.exec.child DIR MSG_FD`` in a new session and process group (spawned,
never forked: torch/OpenMP threads and fork do not mix). The child imports
numpy and torch, says "ready" on a pipe, then runs each CaseRequest (a JSON line
on its stdin) through ``harness.run.case.run_case``; it says "S" when it starts a
case and "D" with the record when it is done, on the same pipe (no file per case;
its output goes to ``DIR/child.log``; ``harness.exec.process``). The parent reaps it
with ``os.wait4``:

* death by a signal (segfault, abort, the OOM killer) -> status ``crash`` with the
  signal's name and the tail of the child's output (faulthandler prints the
  Python stack of the crashing thread there);
* exceeding ``timeout_s`` (counted from the case's start, "S") -> SIGUSR1
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
``HARNESS_WORKER_CASES`` (default 5000: more than one engine's 2,033 ONNX operator
cases) cases have run; ``HARNESS_WORKER_CASES=1`` gives every case a fresh child.
Between cases the child restores torch's global state, the environment and the
working directory (``harness.exec.child``). An isolated measurement (the perf suite,
``--bench``) always runs in a fresh child, alone (the perf suite: one per trial).

Memory is measured in the child: it resets the kernel's RSS high-water mark once
its imports are done and reads it after the case (``harness.run.memory``). The
parent adds the child's ``ru_maxrss`` from ``os.wait4`` as a cross-check, with
a caveat measured here: Linux starts an exec'd child's ``ru_maxrss`` at the
parent's own high-water mark (vfork), so it is only informative above
``parent_peak_rss_mb``, recorded beside it.

Prefetch: while the parent does its share of a case (pytest's reporting, appending the
record), the child would idle, and vice versa. A caller that knows its next cases
(the ONNX operator suite) passes them as ``upcoming``: when neither the case nor
they are measured (timing must not share the CPU), up to ``HARNESS_PREFETCH``
(default 8; 0 = off) of them are queued in the child behind the current one, so it
works on them meanwhile. A later request uses a prefetched result only if it equals
that request exactly; one that does not is dropped. A prefetched case that crashes
or overruns is charged to that case when it is requested (its time limit counts from
its own start); the cases queued behind it die with the child and run again, in a
fresh child, when requested. Records are still returned (and appended by the caller)
one by one, when each case's turn comes.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import resource
import time
from collections.abc import Sequence

from harness.core.options import CaseRequest
from harness.core.record import Record
from harness.exec import outcome
from harness.exec.process import Child, Entry, env_key, rss_mb

REUSE_ENV = "HARNESS_WORKER_CASES"  # conformance cases one child may run in sequence; 1 = a fresh child per case
DEFAULT_CASES_PER_CHILD = 5000
MAX_RSS_ENV = "HARNESS_WORKER_MAX_RSS_MB"  # a reused child past this resident size is replaced
DEFAULT_MAX_RSS_MB = 4096.0
PREFETCH_ENV = "HARNESS_PREFETCH"  # upcoming unmeasured cases queued ahead in the child; 0 = none
DEFAULT_PREFETCH = 8


def run_in_subprocess(case: CaseRequest, timeout_s: float = 600.0, upcoming: Sequence[CaseRequest] = ()) -> Record:
    """Run ``case`` in a child process and return its record; never raises for engine faults.

    ``timeout_s`` limits the case itself: the clock starts when the child starts the case (interpreter
    and torch start-up are harness overhead, limited separately by ``max(timeout_s,
    outcome.STARTUP_LIMIT_S)``). An isolated measurement always gets a fresh child; other cases reuse the
    previous case's child while it is healthy. ``upcoming``: the cases the caller will request next, in
    order; unmeasured ones may be queued in the child ahead of time (see the module docstring). Callers
    whose cases run in parallel (pytest-xdist workers) pass none.
    """
    from harness.run.memory import child_peak_mb, maxrss_to_mb

    started = time.time()
    parent_peak = round(maxrss_to_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss), 1)  # a syscall, no /proc
    t0 = time.perf_counter()
    shared = case.measure is None or not case.measure.isolated  # only an isolated measurement needs a fresh child
    ahead = _prefetchable(case, upcoming) if shared else []
    child = _IDLE.take(reusable=shared)
    while True:
        child = child or Child()
        entry, timed_out = _collect(child, case, timeout_s, ahead)
        if entry is not None:
            break
        child.discard()  # a dropped prefetched case before ours crashed or overran: ours never ran there
        child = None
    end = time.perf_counter()
    record = None if timed_out else outcome.parse_record(child.record_text(entry.index))
    log_tail = outcome.tail(child.dir / "child.log") if record is None else ""
    keep = record is not None and shared and child.alive() and (child.cases < _max_cases() or child.pending) and \
        _resident_mb(child, record) < float(os.environ.get(MAX_RSS_ENV, DEFAULT_MAX_RSS_MB))
    if keep:
        _IDLE.put(child)
    else:
        child.discard()  # waits for the exit: a measured case never overlaps the previous child's teardown
    wall_s = time.perf_counter() - t0
    rusage = child.reaper.rusage
    child_peak = round(child_peak_mb(rusage), 1) if rusage is not None else None
    begin = child.started_at(entry.index)
    if record is None:
        if entry.prefetched:  # it ran (and died) before this call: its own start and length
            began = begin if begin is not None else t0
            started, failed_s = started - (t0 - began), end - began
        record = outcome.failure_record(case, started, failed_s if entry.prefetched else wall_s, child.reaper.status,
                                        timed_out, timeout_s, log_tail, child_peak)
    done = child.messages.dones[entry.index] if entry.index < len(child.messages.dones) else end
    overhead = wall_s - record.duration_s
    if entry.prefetched and begin is not None:  # the parent's time in this call that the case did not fill
        overhead = wall_s - max(min(done, end) - max(begin, t0), 0.0)
    worker = {**record.extra.get("worker", {}), "wall_s": round(wall_s, 3), "case_index": entry.index,
              "case_s": round(done - begin, 3) if begin is not None else None,
              "overhead_s": round(overhead, 3), "ru_maxrss_mb": child_peak, "parent_peak_rss_mb": parent_peak,
              **({"prefetched": True} if entry.prefetched else {})}
    return dataclasses.replace(record, extra={**record.extra, "worker": worker})


def _collect(child: Child, case: CaseRequest, timeout_s: float,
             ahead: list[CaseRequest]) -> tuple[Entry | None, str | None]:
    """Find (or queue) ``case`` in ``child``, queue the cases to prefetch behind it, and wait for it.

    Pending cases before it are prefetched ones nobody asked for: they are waited for and dropped. Returns
    the case's entry and how it overran (None: it ended by itself or the child died in it); (None, None)
    when the child died or was killed in a dropped case before ours started: run ours in a fresh child.
    """
    entry = child.find(case)
    if entry is None:
        entry = child.send(case, timeout_s)
    for nxt in ahead:
        if child.cases >= _max_cases():
            break
        if child.find(nxt) is None:
            child.send(nxt, timeout_s, prefetched=True)
    while child.pending:
        head = child.pending.pop(0)
        timed_out = child.finish(head)
        if head is entry:
            return entry, timed_out
        if timed_out or child.messages.closed:
            child.pending.insert(0, head)  # still queued behind it: discard() kills rather than waits
            return None, None
    raise AssertionError("the requested case was not queued")  # unreachable: send() queued it


def prefetch_limit() -> int:
    """How many upcoming cases may be queued ahead in the child (``HARNESS_PREFETCH``, default 8; 0 = none)."""
    return max(int(os.environ.get(PREFETCH_ENV, DEFAULT_PREFETCH)), 0)


def _prefetchable(case: CaseRequest, upcoming: Sequence[CaseRequest]) -> list[CaseRequest]:
    """The upcoming cases that may run ahead: none behind a measured case, and none from the first measured
    upcoming one on; at most ``prefetch_limit()``."""
    limit = prefetch_limit()
    if case.measure is not None or not limit:
        return []
    ahead: list[CaseRequest] = []
    for nxt in upcoming[:limit]:
        if nxt.measure is not None:
            break
        ahead.append(nxt)
    return ahead


def _resident_mb(child: Child, record: Record) -> float:
    """The child's resident size after the case: the high-water mark it reported with the record (it never
    sits below the resident size), else read from /proc."""
    peak = (record.extra.get("memory") or {}).get("child", {}).get("peak_mb")
    return float(peak) if isinstance(peak, int | float) else rss_mb(child.proc.pid)


def _max_cases() -> int:
    return max(int(os.environ.get(REUSE_ENV, DEFAULT_CASES_PER_CHILD)), 1)


class _IdleChild:
    """The one conformance child kept between cases (process-local; ended at interpreter exit)."""

    def __init__(self) -> None:
        self._child: Child | None = None
        atexit.register(self.close)

    def take(self, *, reusable: bool) -> Child | None:
        child, self._child = self._child, None
        if child is None:
            return None
        # a dead child with queued cases is kept: the case it died in gets its crash record when requested
        dead = not child.alive() and not child.pending
        if not reusable or dead or child.env_key != env_key():
            child.discard()  # a measured case, a dead child, or the environment changed (a test set a variable)
            return None
        return child

    def put(self, child: Child) -> None:
        self.close()
        self._child = child

    def close(self) -> None:
        if self._child is not None:
            self._child.discard()
            self._child = None


_IDLE = _IdleChild()
