"""Run-vs-run comparison: matched cases, verdict and metric changes, statistically checked latency."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from harness.core.types import FAILING, PASSING
from harness.report.load import CASE_KEY, Runs, latest, load_runs
from harness.report.thresholds import ALPHA, METRICS, FailOn, Significance, parse_fail_on, slower_test

BROKEN = FAILING | {"unsupported"}
"""A case that passed before and now ends in one of these is a regression whatever the thresholds."""


@dataclass(frozen=True)
class Regression:
    """One reason the comparison fails."""

    case: str
    metric: str  # "verdict" or a threshold metric
    baseline: Any
    current: Any
    change: str
    detail: str = ""

    def __str__(self) -> str:
        if self.metric == "verdict":
            why = f": {self.detail}" if self.detail else ""
            return f"{self.case}: verdict {self.baseline} -> {self.current}{why}"
        return f"{self.case}: {self.metric} {self.baseline} -> {self.current} ({self.change}; {self.detail})"


@dataclass(frozen=True)
class CaseDiff:
    """One case matched in both runs."""

    key: tuple[str, ...]  # CASE_KEY values
    label: str
    base: dict[str, Any]
    cur: dict[str, Any]
    significance: Significance | None
    regressions: tuple[Regression, ...] = ()
    notes: tuple[str, ...] = ()
    outcome: str = "same"  # REGRESSION, changed, better or same

    def change(self, column: str) -> float:
        """Relative change of a column (cur / base - 1), NaN when unknown."""
        b, c = self.base.get(column, math.nan), self.cur.get(column, math.nan)
        if not (isinstance(b, float | int) and isinstance(c, float | int)) or not b or math.isnan(b) or math.isnan(c):
            return math.nan
        return c / b - 1.0


@dataclass(frozen=True)
class CompareOutcome:
    """The comparison: the printed table, the regressions and the process exit code (0 ok, 1 regression,
    2 nothing comparable)."""

    text: str
    regressions: list[Regression]
    exit_code: int
    diffs: list[CaseDiff] = field(default_factory=list)
    only_baseline: list[str] = field(default_factory=list)
    only_current: list[str] = field(default_factory=list)
    thresholds: tuple[FailOn, ...] = ()
    title: str = ""
    html: Path | None = None

    def parts(self) -> dict[str, Any]:
        """What the HTML view shows."""
        return {"title": self.title, "thresholds": self.thresholds, "diffs": self.diffs,
                "only_baseline": self.only_baseline, "only_current": self.only_current,
                "regressions": self.regressions}


def case_label(key: Sequence[str], *, machine: bool = False) -> str:
    """``model backend precision [suite]`` (plus ``@machine``)."""
    machine_id, model, backend, precision, suite = key
    return f"{model} {backend} {precision} [{suite}]" + (f" @{machine_id}" if machine else "")


def _check(key: tuple[str, ...], label: str, base: dict[str, Any], cur: dict[str, Any],
           thresholds: Sequence[FailOn]) -> CaseDiff:
    regs: list[Regression] = []
    notes: list[str] = []
    bs, cs = base["status"], cur["status"]
    if bs in PASSING and cs in BROKEN:
        regs.append(Regression(label, "verdict", bs, cs, f"{bs} -> {cs}", cur.get("reason", "")[:300]))
    elif bs != cs:
        notes.append(f"verdict {bs} -> {cs}")
    if bs in PASSING and cs in PASSING and base["executed_precision"] != cur["executed_precision"]:
        notes.append(f"executed precision {base['executed_precision']} -> {cur['executed_precision']}")
    samples_b, samples_c = base.get("samples_ms") or [], cur.get("samples_ms") or []
    both_timed = base.get("has_latency") and cur.get("has_latency")
    sig = slower_test(samples_b, samples_c) if both_timed else None
    if both_timed and (base.get("unstable") or cur.get("unstable")):
        notes.append(f"unstable measurement (CV {base.get('cv', math.nan):.2g} -> {cur.get('cv', math.nan):.2g}): "
                     "the machine was not quiet")
    if both_timed and sig is None and any(t.spec.latency for t in thresholds):
        notes.append("no raw samples: threshold on p50 only, no significance test")
    for t in thresholds:
        col = t.spec.column
        b, c = float(base.get(col, math.nan)), float(cur.get(col, math.nan))
        if not t.exceeded(b, c):
            continue
        change = f"+{t.worsening(b, c):.1%}" if t.relative else f"{t.worsening(b, c):+.4g}{t.unit}"
        if t.spec.latency:
            if sig is None and t.metric != "p50":
                notes.append(f"{t.metric} {change} not tested (no raw samples)")
                continue
            if sig is not None and not sig.slower:
                notes.append(f"{t.metric} {change} but not significant ({sig}, alpha {ALPHA})")
                continue
        detail = f"limit {t}" + (f", {sig}" if t.spec.latency and sig is not None else "")
        regs.append(Regression(label, t.metric, _short(b), _short(c), change, detail))
    diff = CaseDiff(key, label, base, cur, sig, tuple(regs), tuple(notes))
    return replace(diff, outcome=_outcome(diff))


def _outcome(d: CaseDiff) -> str:
    if d.regressions:
        return "REGRESSION"
    if d.base["status"] != d.cur["status"] or any("not significant" in n for n in d.notes):
        return "changed"
    if d.change("p50_ms") < -0.05:  # faster: confirmed by the reverse test when samples exist
        reverse = slower_test(d.cur.get("samples_ms") or [], d.base.get("samples_ms") or [])
        if reverse is None or reverse.slower:
            return "better"
    return "same"


def _short(value: float) -> str:
    return f"{value:.6f}" if 0.99 < value <= 1.0 else f"{value:.4g}"


def _rows(runs: Runs) -> dict[tuple[str, ...], dict[str, Any]]:
    frame = latest(runs.frame)
    return {tuple(r[k] for k in CASE_KEY): r for r in frame.to_dict("records")}


def diff_runs(baseline: Runs, current: Runs, thresholds: Sequence[FailOn]) -> tuple[list[CaseDiff], list, list]:
    """Case diffs of matched cases, plus the case keys found only in the baseline / only in current."""
    base, cur = _rows(baseline), _rows(current)
    multi = len({k[0] for k in base} | {k[0] for k in cur}) > 1
    diffs = [_check(k, case_label(k, machine=multi), base[k], cur[k], thresholds) for k in base if k in cur]
    order = {"REGRESSION": 0, "changed": 1, "better": 2, "same": 3}
    diffs.sort(key=lambda d: (order[d.outcome], d.label))
    only_b = sorted(case_label(k, machine=multi) for k in base if k not in cur)
    only_c = sorted(case_label(k, machine=multi) for k in cur if k not in base)
    return diffs, only_b, only_c


def _pct(value: float) -> str:
    return "" if math.isnan(value) else f"{value:+.1%}"


def _num(value: Any, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def table_rows(diffs: Sequence[CaseDiff]) -> list[list[str]]:
    """The text table rows (also used by the HTML view)."""
    rows = []
    for d in diffs:
        b, c = d.base, d.cur
        verdict = b["status"] if b["status"] == c["status"] else f"{b['status']} -> {c['status']}"
        cos_b, cos_c = b.get("cosine", math.nan), c.get("cosine", math.nan)
        cosine = "" if math.isnan(cos_b) or math.isnan(cos_c) else (
            f"{cos_c:.6f}" if cos_b == cos_c else f"{cos_b:.6f}->{cos_c:.6f}")
        why = "; ".join([f"{r.metric} {r.change} ({r.detail})" if r.metric != "verdict" else
                          f"verdict: {r.detail[:100]}" for r in d.regressions] + list(d.notes))
        rows.append([d.outcome, d.label, verdict,
                     f"{_num(b.get('p50_ms'))} -> {_num(c.get('p50_ms'))}" if c.get("has_latency")
                     or b.get("has_latency") else "", _pct(d.change("p50_ms")),
                     f"{d.significance.p_value:.2g}" if d.significance else "", _pct(d.change("p99_ms")),
                     _pct(d.change("peak_rss_mb")), cosine, why])
    return rows


HEADER = ["RESULT", "CASE", "VERDICT", "P50 MS", "P50", "P(SLOWER)", "P99", "PEAK MB", "COSINE", "WHY"]


def render_text(outcome_parts: dict[str, Any], max_same: int = 40) -> str:
    """The printed comparison."""
    diffs: list[CaseDiff] = outcome_parts["diffs"]
    shown = [d for d in diffs if d.outcome != "same"]
    same = [d for d in diffs if d.outcome == "same"]
    shown += same[:max_same]
    rows = table_rows(shown)
    widths = [min(max([len(h), *(len(r[i]) for r in rows)]), 60 if i == 1 else 200) for i, h in enumerate(HEADER)]
    lines = [outcome_parts["title"], f"thresholds: {', '.join(map(str, outcome_parts['thresholds']))} (latency: "
             f"one-sided Mann-Whitney U on raw samples at alpha {ALPHA} AND the threshold)", ""]
    for row in [HEADER, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if len(same) > max_same:
        lines.append(f"... and {len(same) - max_same} more unchanged cases (write -o compare.html for all)")
    for name, keys in (("only in baseline", outcome_parts["only_baseline"]),
                       ("only in current", outcome_parts["only_current"])):
        if keys:
            lines.append(f"{name} ({len(keys)}): " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
    regs = outcome_parts["regressions"]
    lines.append("")
    lines.append(f"{len(regs)} regression(s) in {sum(d.outcome == 'REGRESSION' for d in diffs)} of {len(diffs)} "
                 "matched cases" if regs else f"no regression in {len(diffs)} matched cases")
    for r in regs:
        lines.append(f"  REGRESSION {r}")
    return "\n".join(lines)


def _describe(runs: Runs) -> str:
    ids = sorted(runs.runs)
    machines = sorted(set(runs.frame["machine_id"]))
    return f"{', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''} ({len(runs.frame)} records; machine " \
           f"{', '.join(machines)})"


def compare_outcome(baseline: str | Path, current: str | Path, fail_on: Sequence[str] = ("p50:10%",),
                    ) -> CompareOutcome:
    """Compare two runs (or results dirs: newest record per case) case by case on the same machine.

    A passing case that now fails is always a regression; a latency threshold counts only when the raw
    samples are also significantly slower. ``harness.report.compare_view.compare_runs`` adds the HTML view.
    """
    thresholds = parse_fail_on(fail_on)
    base_runs = load_runs([baseline], require_records=True)
    cur_runs = load_runs([current], require_records=True)
    diffs, only_b, only_c = diff_runs(base_runs, cur_runs, thresholds)
    regressions = [r for d in diffs for r in d.regressions]
    title = f"baseline {_describe(base_runs)}\ncurrent  {_describe(cur_runs)}"
    text = render_text({"title": title, "thresholds": thresholds, "diffs": diffs, "only_baseline": only_b,
                        "only_current": only_c, "regressions": regressions})
    exit_code = 1 if regressions else 0
    if not diffs:
        mb = sorted(set(base_runs.frame["machine_id"]))
        mc = sorted(set(cur_runs.frame["machine_id"]))
        why = (f"the runs come from different machines (baseline {', '.join(mb)}, current {', '.join(mc)}); cases "
               "are only compared on the same machine: set HARNESS_MACHINE_ID to the same name on both runs if "
               "they really are the same machine") if not set(mb) & set(mc) else \
            "no case (model, backend, precision, suite) appears in both runs"
        text += f"\nnothing to compare: {why}"
        exit_code = 2
    return CompareOutcome(text=text, regressions=regressions, exit_code=exit_code, diffs=diffs,
                          only_baseline=only_b, only_current=only_c, thresholds=thresholds, title=title)


def diffs_frame(diffs: Sequence[CaseDiff]) -> pd.DataFrame:
    """One row per matched case with the compared values (for the HTML view)."""
    rows = []
    for d, cells in zip(diffs, table_rows(diffs), strict=True):
        rows.append({"outcome": d.outcome, "case": d.label, "model": d.key[1], "backend": d.key[2],
                     "precision": d.key[3], "base_status": d.base["status"], "cur_status": d.cur["status"],
                     "base_p50": d.base.get("p50_ms"), "cur_p50": d.cur.get("p50_ms"),
                     "p50_change": d.change("p50_ms"), "p99_change": d.change("p99_ms"),
                     "mem_change": d.change("peak_rss_mb"), "p_value": d.significance.p_value
                     if d.significance else math.nan, "cosine": cells[8], "why": cells[9]})
    return pd.DataFrame(rows)


__all__ = ["METRICS", "CaseDiff", "CompareOutcome", "Regression", "compare_outcome", "diff_runs"]
