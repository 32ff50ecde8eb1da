"""Isolated measurements in rounds: each trial of a case in its own fresh process, trials spread over the run.

The evidence for a latency regression is a repeated trial, and trials are only
evidence if they are independent draws of everything that moves a latency: the
process (thread placement, memory layout, an engine's OpenMP pool) and the
moment (measured here: a shared 2-vCPU machine has episodes of 10-20 s in which
OpenMP engines, torch and ncnn, run 20-30 % slower, while ORT and OpenVINO do
not). Trials timed back to back in one process share both, so two identical runs
could differ "significantly". ``run_rounds`` therefore measures trial 1 of every
case (each case alone in a fresh child, ``harness.exec.supervisor``), then
trial 2 of every case, and so on: a case's trials lie a whole round apart, and an
episode shows up as spread between its trial medians (``unstable``, never
gated) instead of as a shift of all of them.

``merge_rounds`` makes one record of a case's rounds: the first round's verdict
(every round re-checks it; a round that fails is the record, with its round named),
latency over all rounds' samples with each round's median in ``trials_p50_ms``,
throughput per batch likewise, the median peak memory, summed measurement phases.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from harness.core.options import CaseRequest, MeasureOptions
from harness.core.record import Record
from harness.core.types import Status

Progress = Callable[[str], None]


def round_options(measure: MeasureOptions) -> MeasureOptions:
    """One round's options: a single trial with its share of the totals (a fresh process warms up in full)."""
    k = measure.trials
    return dataclasses.replace(measure, trials=1, min_time_s=measure.min_time_s / k,
                               min_iterations=-(-measure.min_iterations // k),
                               max_samples=max(measure.max_samples // k, 1), isolated=True)


def run_rounds(cases: Sequence[CaseRequest], run: Callable[[CaseRequest], Record],
               progress: Progress | None = None) -> dict[CaseRequest, Record]:
    """Measure ``cases`` (each with ``measure.trials`` = k) in k rounds of one trial each; one record per case.

    ``run`` runs one request and returns its record (``run_in_subprocess``: a fresh child per isolated
    measurement). A case whose first round does not pass (convert failure, skip, crash...) is not
    repeated: there is nothing to measure.
    """
    rounds: dict[CaseRequest, list[Record]] = {c: [] for c in cases}
    k = max((c.measure.trials for c in cases if c.measure is not None), default=1)
    started = time.perf_counter()
    for r in range(k):
        todo = [c for c in cases if _wants_round(c, rounds[c], r)]
        for i, case in enumerate(todo, 1):
            if progress is not None:
                progress(f"round {r + 1}/{k}, case {i}/{len(todo)}: {case.test_id or case.case_id} "
                         f"({time.perf_counter() - started:.0f} s)")
            assert case.measure is not None
            rec = run(dataclasses.replace(case, measure=round_options(case.measure)))
            rounds[case].append(rec)
    return {c: merge_rounds(recs, c.measure) for c, recs in rounds.items()}


def _wants_round(case: CaseRequest, done: list[Record], r: int) -> bool:
    if case.measure is None:
        return r == 0
    if r >= case.measure.trials:
        return False
    return r == 0 or all(Status(d.status).passing and d.latency for d in done)


def merge_rounds(records: Sequence[Record], measure: MeasureOptions | None = None) -> Record:
    """One record of a case's rounds (see the module docstring); a single record is returned as it is."""
    if not records:
        raise ValueError("merge_rounds needs at least one round's record")
    first = records[0]
    k = len(records)
    if k == 1:
        return first
    for r, rec in enumerate(records[1:], 2):
        if rec.status != first.status or not rec.latency:
            return dataclasses.replace(rec, reason=f"round {r} of {k} (round 1: {first.status}): {rec.reason}")
    cv_threshold = measure.cv_threshold if measure is not None else 0.1
    latency = merge_latency([r.latency or {} for r in records], cv_threshold)
    extra = dict(first.extra)
    extra["rounds"] = [{"p50_ms": (r.latency or {}).get("p50_ms"), "started_at": r.started_at,
                        "pid": r.extra.get("worker", {}).get("pid"), "peak_rss_mb": r.peak_rss_mb,
                        "load_1m": (r.latency or {}).get("load_1m")} for r in records]
    roof = first.extra.get("roofline")
    if roof and roof.get("achieved_gflop_s") and roof.get("gflops") and latency.get("p50_ms"):
        from harness.run.roofline import at_latency

        extra["roofline"] = at_latency(roof, latency["p50_ms"])
    peaks = [r.peak_rss_mb for r in records if r.peak_rss_mb is not None]
    timings = dict(first.timings_s)
    timings["measure"] = round(sum(r.timings_s.get("measure", 0.0) for r in records), 3)
    return dataclasses.replace(
        first, latency=latency, throughput=merge_throughput([r.throughput or [] for r in records], cv_threshold),
        peak_rss_mb=round(statistics.median(peaks), 1) if peaks else None, extra=extra, timings_s=timings,
        duration_s=round(sum(r.duration_s for r in records), 3))


def merge_latency(rounds: Sequence[dict[str, Any]], cv_threshold: float = 0.1) -> dict[str, Any]:
    """Latency dicts of single-trial rounds -> one: percentiles of the pooled samples, each round's median."""
    from harness.run import timing

    samples = [v for lat in rounds for v in lat.get("samples_ms", [])]
    if not samples:
        raise ValueError("rounds without latency samples cannot be merged")
    pooled = timing.summarize([round(v * 1e6) for v in samples], cv_threshold=cv_threshold)
    medians = [float(lat["p50_ms"]) for lat in rounds]
    out = {**rounds[0], **pooled.as_dict()}
    out.update(
        n=sum(int(lat.get("n", 0)) for lat in rounds),
        elapsed_s=round(sum(float(lat.get("elapsed_s", 0.0)) for lat in rounds), 4),
        min_ms=min(float(lat.get("min_ms", math.inf)) for lat in rounds),
        trials_p50_ms=medians, trials=len(rounds), trials_spread="rounds: one fresh process per trial",
        unstable=timing.trials_disagree(medians, cv_threshold),
        load_1m=max((lat["load_1m"] for lat in rounds if lat.get("load_1m") is not None), default=None))
    engine = [lat["engine_p50_ms"] for lat in rounds if lat.get("engine_p50_ms") is not None]
    if len(engine) == len(rounds):
        out["engine_p50_ms"] = round(statistics.median(engine), 6)
    out["busy"] = any(lat.get("busy") for lat in rounds)
    return out


def merge_throughput(rounds: Sequence[list[dict[str, Any]]], cv_threshold: float = 0.1) -> list[dict[str, Any]]:
    """Throughput entries of the rounds, matched by (batch, mode): median rate and p50, each round's p50."""
    from harness.run import timing

    keyed: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for entries in rounds:
        for e in entries:
            keyed.setdefault((e.get("batch"), e.get("mode")), []).append(e)
    out = []
    for group in keyed.values():
        merged = dict(group[0])
        for key in ("items_per_s", "p50_ms", "gflop_s"):
            values = [e[key] for e in group if isinstance(e.get(key), int | float)]
            if values:
                merged[key] = round(statistics.median(values), 6)
        p50s = [e["p50_ms"] for e in group if isinstance(e.get("p50_ms"), int | float)]
        if p50s:
            merged["trials_p50_ms"] = p50s
        merged["unstable"] = any(e.get("unstable") for e in group) or timing.trials_disagree(p50s, cv_threshold)
        out.append(merged)
    return out
