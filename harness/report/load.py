"""Reading runs: run directories -> one pandas frame of records plus run metadata."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.core.record import Record
from harness.core.types import backend_sort_key, precision_sort_key
from harness.results import iter_run_dirs, read_records

CASE_KEY = ["machine_id", "model", "backend", "precision", "suite"]
"""Columns that identify one case on one machine (across runs)."""


LATENCY_FIELDS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms", "cv", "min_ms", "n", "threads", "batch")


@dataclass(frozen=True)
class RunInfo:
    """One run directory: its id, machine and time span."""

    run_id: str
    path: Path
    machine_id: str
    machine: dict[str, Any]
    started_at: float
    finished_at: float
    records: int
    info: dict[str, Any]


@dataclass(frozen=True)
class Runs:
    """Every record of the loaded runs (``frame``, one row per record) and the runs themselves."""

    frame: pd.DataFrame
    runs: dict[str, RunInfo]

    def machines(self) -> list[str]:
        """Machine ids in the order of their first run."""
        order = sorted(self.runs.values(), key=lambda r: r.started_at)
        seen = [r.machine_id for r in order]
        seen += list(self.frame["machine_id"].unique()) if len(self.frame) else []
        return list(dict.fromkeys(seen))

    def fingerprint(self, machine_id: str) -> dict[str, Any]:
        """The machine fingerprint from the newest run.json of that machine (empty if none)."""
        runs = sorted((r for r in self.runs.values() if r.machine_id == machine_id), key=lambda r: r.started_at)
        return dict(runs[-1].machine) if runs else {}

    def for_machine(self, machine_id: str) -> pd.DataFrame:
        """The records of one machine."""
        return self.frame[self.frame["machine_id"] == machine_id]


def _num(value: Any) -> float:
    """A float from a record value; non-finite floats were stored as strings ("nan", "inf")."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def record_row(rec: Record) -> dict[str, Any]:
    """Flatten one record into the columns the report uses."""
    lat = rec.latency or {}
    metrics = rec.metrics or {}
    extra = rec.extra or {}
    known = rec.known_failure or {}
    row: dict[str, Any] = {
        "run_id": rec.run_id, "machine_id": rec.machine_id, "model": rec.model, "backend": rec.backend,
        "precision": rec.precision, "suite": rec.suite, "status": rec.status, "reason": rec.reason or "",
        "executed_precision": rec.executed_precision or "", "precision_match": rec.precision_match or "",
        "backend_version": rec.backend_version or "", "test_id": rec.test_id or rec.case_id,
        "started_at": _num(rec.started_at), "duration_s": _num(rec.duration_s),
        "artifact_mb": _num(rec.artifact_mb), "peak_rss_mb": _num(rec.peak_rss_mb), "accuracy": _num(rec.accuracy),
        "known_reason": str(known.get("reason", "")), "known_link": str(known.get("link", "")),
        "has_latency": bool(lat) and not math.isnan(_num(lat.get("p50_ms"))),
        "unstable": bool(lat.get("unstable", False)),
        "samples_ms": [x for x in map(_num, lat.get("samples_ms") or []) if math.isfinite(x)],
        "best_items_per_s": max((_num(t.get("items_per_s")) for t in rec.throughput or []), default=math.nan),
        "op_types": [str(o) for o in extra.get("op_types") or []],
        "opset": _num(extra.get("opset")),
    }
    for key in ("max_abs", "max_rel", "cosine", "mismatch_fraction", "nonfinite", "error_vs_fp64_ratio"):
        row[key] = _num(metrics.get(key))
    for key in LATENCY_FIELDS:
        row[key] = _num(lat.get(key))
    return row


COLUMNS = list(record_row(Record(run_id="", model="", backend="", precision="", status="")).keys())


def _run_info(run_dir: Path, records: list[Record]) -> RunInfo:
    info: dict[str, Any] = {}
    path = run_dir / "run.json"
    if path.exists():
        try:
            info = json.loads(path.read_text())
        except ValueError:
            info = {}
    machine = info.get("machine") if isinstance(info.get("machine"), dict) else {}
    ids = [r.machine_id for r in records if r.machine_id]
    machine_id = max(set(ids), key=ids.count) if ids else str(machine.get("machine_id") or "unknown-machine")
    starts = [r.started_at for r in records if r.started_at]
    ends = [r.started_at + (r.duration_s or 0.0) for r in records if r.started_at]
    started = _num(info.get("started_at"))
    started = started if math.isfinite(started) else (min(starts) if starts else 0.0)
    finished = _num(info.get("finished_at", info.get("ended_at")))
    finished = finished if math.isfinite(finished) else (max(ends) if ends else started)
    return RunInfo(run_id=str(info.get("run_id") or run_dir.name), path=run_dir, machine_id=machine_id,
                   machine=machine, started_at=started, finished_at=finished, records=len(records), info=info)


def load_runs(paths: Sequence[str | Path] | str | Path, *, require_records: bool = False) -> Runs:
    """Load run directories (or results directories holding runs) into a :class:`Runs`.

    Raises FileNotFoundError when a path does not exist or holds no run.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise ValueError("no result paths given: pass run directories or a results directory holding runs")
    for p in paths:
        if not Path(p).exists():
            raise FileNotFoundError(f"{p} does not exist: pass a run directory (holding records.jsonl) "
                                    "or a results directory whose subdirectories are runs")
    dirs = list(dict.fromkeys(Path(d).resolve() for d in iter_run_dirs(paths)))
    if not dirs:
        raise FileNotFoundError(f"no runs under {', '.join(map(str, paths))}: expected a directory holding "
                                "records.jsonl/run.json or a results directory of such run directories "
                                "(write one with `pytest suites/ --results-dir results`)")
    runs: dict[str, RunInfo] = {}
    rows: list[dict[str, Any]] = []
    for d in dirs:
        records = read_records(d)
        info = _run_info(d, records)
        runs[info.run_id] = info
        for rec in records:
            row = record_row(rec)
            row["machine_id"] = row["machine_id"] or info.machine_id
            row["run_id"] = row["run_id"] or info.run_id
            rows.append(row)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    if require_records and frame.empty:
        raise ValueError(f"the runs under {', '.join(map(str, paths))} hold no records (records.jsonl is empty "
                         "or missing): the session may have stopped before any case finished")
    # A case re-run within one run (e.g. a retried worker) keeps its newest record.
    frame = frame.sort_values("started_at", kind="stable")
    frame = frame.drop_duplicates(["run_id", *CASE_KEY, "test_id"], keep="last").reset_index(drop=True)
    return Runs(frame=frame, runs=runs)


def latest(frame: pd.DataFrame, *, with_latency: bool = False) -> pd.DataFrame:
    """The newest record of each case, in model/backend/precision order.

    ``with_latency`` then keeps only those that have latency: a case whose newest
    record failed shows no (stale) timing.
    """
    newest = frame.sort_values("started_at", kind="stable").drop_duplicates(CASE_KEY, keep="last")
    if with_latency:
        newest = newest[newest["has_latency"]]
    return sort_cases(newest)


def sort_cases(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered by model, then backend and precision in their usual order."""
    keys = [(m, s, backend_sort_key(b), precision_sort_key(p)) for m, s, b, p in
            zip(frame["model"], frame["suite"], frame["backend"], frame["precision"], strict=True)]
    order = sorted(range(len(frame)), key=keys.__getitem__)
    return frame.iloc[order]


def combos(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """The (backend, precision) pairs present, in backend then precision order."""
    pairs = {(b, p) for b, p in zip(frame["backend"], frame["precision"], strict=True)}
    bk = {b: backend_sort_key(b) for b, _ in pairs}
    pk = {p: precision_sort_key(p) for _, p in pairs}
    return sorted(pairs, key=lambda bp: (bk[bp[0]], pk[bp[1]]))
