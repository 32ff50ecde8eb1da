"""Reading runs: run directories -> one pandas frame of records plus run metadata."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.core.record import Record
from harness.core.types import backend_sort_key, precision_sort_key
from harness.results import iter_run_dirs, read_records, read_run_info

CASE_KEY = ["machine_id", "model", "backend", "precision", "suite"]
"""Columns that identify one case on one machine (across runs)."""


LATENCY_FIELDS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms", "cv", "min_ms", "n", "threads", "batch",
                  "load_1m", "cpus")


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

    def runs_of(self, machine_id: str) -> list[RunInfo]:
        """The runs holding records of ``machine_id`` (a run id may span machines: shards sharing --run-id),
        plus record-less runs whose run.json names it; ordered by start."""
        ids = set(self.frame.loc[self.frame["machine_id"] == machine_id, "run_id"]) if len(self.frame) else set()
        mine = [r for r in self.runs.values() if r.run_id in ids or r.machine_id == machine_id]
        return sorted(mine, key=lambda r: (r.started_at, r.run_id))


def _num(value: Any) -> float:
    """A float from a record value; non-finite floats were stored as strings ("nan", "inf")."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer of hundreds of digits
        return math.nan


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _finite(values: Any) -> list[float]:
    return [x for x in map(_num, _list(values)) if math.isfinite(x)]


def record_row(rec: Record) -> dict[str, Any]:
    """Flatten one record into the columns the report uses."""
    # Field types were checked when the line was read; values inside the dicts were not.
    lat = _dict(rec.latency)
    metrics = _dict(rec.metrics)
    extra = _dict(rec.extra)
    known = _dict(rec.known_failure)
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
        "samples_ms": _finite(lat.get("samples_ms")),
        "trials_p50_ms": _finite(lat.get("trials_p50_ms")),
        "cause": rec.cause or "",
        "best_items_per_s": max((_num(t.get("items_per_s")) for t in _list(rec.throughput) if isinstance(t, dict)),
                                default=math.nan),
        "op_types": [str(o) for o in _list(extra.get("op_types"))],
        "built": bool(_list(_dict(extra.get("memory")).get("built"))),  # its peak includes building artifacts
        "opset": _num(extra.get("opset")),
    }
    for key in ("max_abs", "max_rel", "cosine", "mismatch_fraction", "nonfinite", "error_vs_fp64_ratio"):
        row[key] = _num(metrics.get(key))
    for key in LATENCY_FIELDS:
        row[key] = _num(lat.get(key))
    return row


COLUMNS = list(record_row(Record(run_id="", model="", backend="", precision="", status="")).keys())


def _run_info(run_dir: Path, records: list[Record]) -> RunInfo:
    info = read_run_info(run_dir / "run.json")
    machine = info.get("machine") if isinstance(info.get("machine"), dict) else {}
    ids = [r.machine_id for r in records if r.machine_id]
    machine_id = max(set(ids), key=ids.count) if ids else str(machine.get("machine_id") or "unknown-machine")
    timed = [(_num(r.started_at), _num(r.duration_s)) for r in records]
    starts = [t for t, _ in timed if math.isfinite(t) and t]
    ends = [t + (d if math.isfinite(d) else 0.0) for t, d in timed if math.isfinite(t) and t]
    started = _num(info.get("started_at"))
    started = started if math.isfinite(started) else (min(starts) if starts else 0.0)
    finished = _num(info.get("finished_at", info.get("ended_at")))
    finished = finished if math.isfinite(finished) else (max(ends) if ends else started)
    run_id = info.get("run_id") if isinstance(info.get("run_id"), str) and info.get("run_id") else run_dir.name
    return RunInfo(run_id=run_id, path=run_dir, machine_id=machine_id,
                   machine=machine, started_at=started, finished_at=finished, records=len(records), info=info)


def _merge(a: RunInfo, b: RunInfo) -> RunInfo:
    """One run id found in two directories (shards of one --run-id written on two machines, then gathered)."""
    first = a if a.started_at <= b.started_at else b
    return RunInfo(run_id=a.run_id, path=first.path, machine_id=first.machine_id, machine=first.machine,
                   started_at=min(a.started_at, b.started_at), finished_at=max(a.finished_at, b.finished_at),
                   records=a.records + b.records, info=first.info)


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
        runs[info.run_id] = _merge(runs[info.run_id], info) if info.run_id in runs else info
        for rec in records:
            row = record_row(rec)
            row["machine_id"] = row["machine_id"] or info.machine_id
            row["run_id"] = info.run_id  # the directory's run (a copied run dir keeps its records' old id)
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
