"""Run-vs-run comparison: matched cases, verdict and metric changes, trial-tested latency, and the gates.

Exit codes of a comparison (``harness compare``): 0 nothing got worse; 1 a regression (a passing case
now fails, a status regression such as pass -> skipped, or a metric beyond its ``--fail-on`` threshold);
2 nothing comparable (no machine or case in common) or a usage error; 3 no regression, but cases of
the baseline are missing from the current run or a measurement the baseline had is missing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.core.types import FAILING, PASSING
from harness.report.load import CASE_KEY, Runs, latest, load_runs
from harness.report.thresholds import (
    ALPHA,
    METRICS,
    TRIAL_ALPHA,
    Criteria,
    FailOn,
    Significance,
    latency_test,
    parse_criteria,
    trial_spread,
)

BROKEN = FAILING | {"unsupported"}
"""A case that passed before and now ends in one of these is a regression whatever the thresholds."""

EXIT_OK, EXIT_REGRESSION, EXIT_NOTHING, EXIT_MISSING = 0, 1, 2, 3
OUTCOME_ORDER = {"REGRESSION": 0, "UNMEASURED": 1, "changed": 2, "better": 3, "same": 4}


@dataclass(frozen=True)
class Regression:
    """One reason the comparison fails: a regression, a missing case or a missing measurement (``kind``)."""

    case: str
    metric: str  # "verdict", "status", a threshold metric, "missing" or "unmeasured"
    baseline: Any
    current: Any
    change: str
    detail: str = ""
    cause: str = ""  # the current record's cause (engine/model/harness/environment); "" when it passed
    kind: str = "regression"  # regression | missing | unmeasured

    @property
    def group(self) -> str:
        """The heading this finding is listed under: the record's cause, else what kind of finding it is."""
        if self.kind == "missing":
            return "missing: no record in the current run"
        if self.kind == "unmeasured":
            return "unmeasured: the measurement is missing"
        if self.metric in ("verdict", "status"):
            return self.cause or "unattributed: the record names no cause"
        return "measured: the case passes, a number got worse"

    def __str__(self) -> str:
        if self.kind == "missing":
            return f"{self.case}: {self.baseline} in the baseline, no record in the current run"
        if self.kind == "unmeasured":
            return f"{self.case}: {self.detail}"
        if self.metric in ("verdict", "status"):
            why = f": {self.detail}" if self.detail else ""
            return f"{self.case}: {self.metric} {self.baseline} -> {self.current}{why}"
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
    outcome: str = "same"  # REGRESSION, UNMEASURED, changed, better or same
    unmeasured: tuple[Regression, ...] = ()
    judged: frozenset[str] = frozenset()  # threshold metrics this case could be judged on

    def change(self, column: str) -> float:
        """Relative change of a column (cur / base - 1), NaN when unknown; p50 from the trials when tested on them."""
        sig = self.significance
        if column == "p50_ms" and sig is not None and not sig.weak:
            return sig.current_ms / sig.baseline_ms - 1.0
        b, c = self.base.get(column, math.nan), self.cur.get(column, math.nan)
        if not (isinstance(b, float | int) and isinstance(c, float | int)) or not b or math.isnan(b) or math.isnan(c):
            return math.nan
        return c / b - 1.0


@dataclass(frozen=True)
class CompareOutcome:
    """The comparison: the printed text, the findings and the process exit code (see the module doc)."""

    text: str
    regressions: list[Regression]
    exit_code: int
    diffs: list[CaseDiff] = field(default_factory=list)
    only_baseline: list[str] = field(default_factory=list)
    only_current: list[str] = field(default_factory=list)
    thresholds: tuple[FailOn, ...] = ()
    title: str = ""
    html: Path | None = None
    missing: list[Regression] = field(default_factory=list)
    unmeasured: list[Regression] = field(default_factory=list)
    criteria: Criteria | None = None
    verdict: str = ""

    @property
    def findings(self) -> list[Regression]:
        """Regressions, missing cases and missing measurements: everything that sets a non-zero exit code."""
        return [*self.regressions, *self.missing, *self.unmeasured]

    def parts(self) -> dict[str, Any]:
        """What the HTML view shows."""
        return {"title": self.title, "thresholds": self.thresholds, "diffs": self.diffs,
                "only_baseline": self.only_baseline, "only_current": self.only_current,
                "regressions": self.regressions, "missing": self.missing, "unmeasured": self.unmeasured,
                "criteria": self.criteria, "verdict": self.verdict}


def case_label(key: Sequence[str], *, machine: bool = False) -> str:
    """``model backend precision [suite]`` (plus ``@machine``)."""
    machine_id, model, backend, precision, suite = key
    return f"{model} {backend} {precision} [{suite}]" + (f" @{machine_id}" if machine else "")


def _finite(value: Any) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool) and math.isfinite(value)


def _status_findings(label: str, base: dict[str, Any], cur: dict[str, Any], criteria: Criteria
                     ) -> tuple[list[Regression], list[str]]:
    bs, cs = base["status"], cur["status"]
    why = cur.get("reason", "")[:300]
    if bs in PASSING and cs in BROKEN:
        return [Regression(label, "verdict", bs, cs, f"{bs} -> {cs}", why, cause=cur.get("cause", ""))], []
    # not run any more, or no longer computed at the requested precision: worse, though nothing failed
    softer = (bs in PASSING and cs == "skipped") or (bs in ("pass", "xpass") and cs == "fallback")
    if softer and "status" in criteria.gates:
        return [Regression(label, "status", bs, cs, f"{bs} -> {cs}", why, cause=cur.get("cause", ""))], []
    return [], [f"verdict {bs} -> {cs}"] if bs != cs else []


def _check(key: tuple[str, ...], label: str, base: dict[str, Any], cur: dict[str, Any],
           criteria: Criteria) -> CaseDiff:
    regs, notes = _status_findings(label, base, cur, criteria)
    if base["status"] in PASSING and cur["status"] in PASSING \
            and base["executed_precision"] != cur["executed_precision"]:
        notes.append(f"executed precision {base['executed_precision']} -> {cur['executed_precision']}")
    both_timed = bool(base.get("has_latency") and cur.get("has_latency"))
    sig = latency_test(base.get("trials_p50_ms") or [], cur.get("trials_p50_ms") or [],
                       base.get("samples_ms") or [], cur.get("samples_ms") or []) if both_timed else None
    unstable = both_timed and bool(base.get("unstable") or cur.get("unstable"))
    if unstable:
        notes.append(f"unstable measurement (trial medians {trial_spread(base)} -> {trial_spread(cur)}): "
                     "latency is never gated on it; re-measure on a quiet machine")
    latency_asked = any(t.spec.latency for t in criteria.thresholds)
    if both_timed and not unstable and sig is None and latency_asked:
        notes.append("no raw samples: threshold on p50 only, no significance test")
    unmeasured, judged = [], set()
    for t in criteria.thresholds:
        b, c = float(base.get(t.spec.column, math.nan)), float(cur.get(t.spec.column, math.nan))
        if t.metric == "p50" and sig is not None and not sig.weak:
            b, c = sig.baseline_ms, sig.current_ms  # the trials' estimate of p50, what the test compared
        if _finite(b) and not _finite(c) and cur["status"] in PASSING:
            unmeasured.append(t.metric)
            continue
        if not (_finite(b) and _finite(c)):
            continue
        change = f"+{t.worsening(b, c):.1%}" if t.relative else f"{t.worsening(b, c):+.4g}{t.unit}"
        if (t.spec.latency and unstable) or (t.metric == "peak_rss_mb" and base.get("built") != cur.get("built")):
            if t.exceeded(b, c):  # an unstable latency; a peak that includes a cold cache's build on one side
                notes.append(f"{t.metric} {change} not gated ({'unstable' if t.spec.latency else 'cold cache'})")
            continue
        judged.add(t.metric)
        if not t.exceeded(b, c):
            continue
        if t.spec.latency:
            if sig is None and t.metric != "p50":
                notes.append(f"{t.metric} {change} not tested (no raw samples)")
                continue
            if sig is not None and not sig.slower:
                notes.append(f"{t.metric} {change} but not significant ({sig}, alpha "
                             f"{ALPHA if sig.weak else TRIAL_ALPHA})")
                continue
        detail = f"limit {t}" + (f", {sig}" if t.spec.latency and sig is not None else "")
        regs.append(Regression(label, t.metric, _short(b), _short(c), change, detail))
    missing_m = []
    if unmeasured and "unmeasured" in criteria.gates:
        missing_m.append(Regression(
            label, "unmeasured", "measured", "not measured", "", f"{', '.join(unmeasured)} measured in the baseline, "
            f"missing or NaN in the current run although its verdict is {cur['status']}", kind="unmeasured"))
    elif unmeasured:
        notes.append(f"{', '.join(unmeasured)} not measured in the current run")
    diff = CaseDiff(key, label, base, cur, sig, tuple(regs), tuple(notes), unmeasured=tuple(missing_m),
                    judged=frozenset(judged))
    return replace(diff, outcome=_outcome(diff))


def _outcome(d: CaseDiff) -> str:
    if d.regressions:
        return "REGRESSION"
    if d.unmeasured:
        return "UNMEASURED"
    held_back = ("not significant", "not gated (unstable)", "not gated (cold cache)")
    if d.base["status"] != d.cur["status"] or any(h in n for h in held_back for n in d.notes):
        return "changed"
    if d.change("p50_ms") < -0.05:  # faster: confirmed by the reverse test when one can be made
        reverse = latency_test(d.cur.get("trials_p50_ms") or [], d.base.get("trials_p50_ms") or [],
                               d.cur.get("samples_ms") or [], d.base.get("samples_ms") or [])
        if reverse is None or reverse.slower:
            return "better"
    return "same"


def _short(value: float) -> str:
    return f"{value:.6f}" if 0.99 < value <= 1.0 else f"{value:.4g}"


def diff_runs(baseline: Runs, current: Runs, criteria: Criteria | Sequence[FailOn]
              ) -> tuple[list[CaseDiff], list[str], list[str], list[Regression]]:
    """Case diffs of matched cases, the labels of cases only in the baseline / only in current, and the
    missing-case findings (baseline cases on a machine the current run also has or on none at all)."""
    if not isinstance(criteria, Criteria):
        criteria = Criteria(tuple(criteria))
    base, cur = ({tuple(r[k] for k in CASE_KEY): r for r in latest(runs.frame).to_dict("records")}
                 for runs in (baseline, current))
    multi = len({k[0] for k in base} | {k[0] for k in cur}) > 1
    diffs = [_check(k, case_label(k, machine=multi), base[k], cur[k], criteria) for k in base if k in cur]
    diffs.sort(key=lambda d: (OUTCOME_ORDER[d.outcome], d.label))
    only_b = sorted((k for k in base if k not in cur), key=lambda k: case_label(k, machine=multi))
    only_c = sorted(case_label(k, machine=multi) for k in cur if k not in base)
    missing = [Regression(case_label(k, machine=multi), "missing", base[k]["status"], "no record", "",
                          kind="missing") for k in only_b]
    return diffs, [case_label(k, machine=multi) for k in only_b], only_c, missing


def _pct(value: float) -> str:
    return "" if math.isnan(value) else f"{value:+.1%}"


def _num(value: Any) -> str:
    return f"{value:.3g}" if _finite(value) else "-"


def table_rows(diffs: Sequence[CaseDiff]) -> list[list[str]]:
    """The text table rows (also used by the HTML view)."""
    rows = []
    for d in diffs:
        b, c = d.base, d.cur
        verdict = b["status"] if b["status"] == c["status"] else f"{b['status']} -> {c['status']}"
        cos_b, cos_c = b.get("cosine", math.nan), c.get("cosine", math.nan)
        cosine = "" if math.isnan(cos_b) or math.isnan(cos_c) else (
            f"{cos_c:.6f}" if cos_b == cos_c else f"{cos_b:.6f}->{cos_c:.6f}")
        why = "; ".join([f"{r.metric} {r.change} ({r.detail})" if r.metric not in ("verdict", "status") else
                         f"{r.metric}: {r.detail[:100]}" for r in d.regressions]
                        + [r.detail for r in d.unmeasured] + list(d.notes))
        sig = d.significance
        p50 = f"{_num(b.get('p50_ms'))} -> {_num(c.get('p50_ms'))}" if c.get("has_latency") or b.get("has_latency") \
            else ""
        if sig is not None and not sig.weak:
            p50 = f"{_num(sig.baseline_ms)} -> {_num(sig.current_ms)} (trials)"
        rows.append([d.outcome, d.label, verdict, p50, _pct(d.change("p50_ms")),
                     f"{sig.p_value:.2g}" + ("w" if sig.weak else "") if sig else "", _pct(d.change("p99_ms")),
                     _pct(d.change("peak_rss_mb")), cosine, why])
    return rows


HEADER = ["RESULT", "CASE", "VERDICT", "P50 MS", "P50", "P(SLOWER)", "P99", "PEAK MB", "COSINE", "WHY"]


def render_findings(findings: Sequence[Regression], limit: int = 25) -> list[str]:
    """The findings grouped by cause (a record's cause, else missing / unmeasured / measured)."""
    groups: dict[str, list[Regression]] = {}
    for f in findings:
        groups.setdefault(f.group, []).append(f)
    lines = []
    for name, items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"  {name} ({len(items)}):")
        lines += [f"    {f.kind.upper()} {f}" for f in items[:limit]]
        if len(items) > limit:
            lines.append(f"    ... and {len(items) - limit} more")
    return lines


def render_text(outcome_parts: dict[str, Any], max_same: int = 40) -> str:
    """The printed comparison."""
    diffs: list[CaseDiff] = outcome_parts["diffs"]
    shown = [d for d in diffs if d.outcome != "same"]
    same = [d for d in diffs if d.outcome == "same"]
    shown += same[:max_same]
    rows = table_rows(shown)
    widths = [min(max([len(h), *(len(r[i]) for r in rows)]), 60 if i == 1 else 200) for i, h in enumerate(HEADER)]
    criteria = outcome_parts.get("criteria")
    lines = [outcome_parts["title"], f"fail on: {criteria or ', '.join(map(str, outcome_parts['thresholds']))} "
             f"(latency: Welch t on log trial medians at alpha {TRIAL_ALPHA} AND the threshold; records without "
             f"trials: Mann-Whitney over iterations at alpha {ALPHA}, weak evidence, p marked w)", ""]
    for row in [HEADER, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if len(same) > max_same:
        lines.append(f"... and {len(same) - max_same} more unchanged cases (write -o compare.html for all)")
    for name, keys in (("only in baseline", outcome_parts["only_baseline"]),
                       ("only in current", outcome_parts["only_current"])):
        if keys:
            lines.append(f"{name} ({len(keys)}): " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
    regs = outcome_parts["regressions"]
    findings = [*regs, *outcome_parts.get("missing", []), *outcome_parts.get("unmeasured", [])]
    lines.append("")
    if findings:
        counts = [f"{len(regs)} regression(s) in {sum(d.outcome == 'REGRESSION' for d in diffs)} of {len(diffs)} "
                  "matched cases" if regs else f"no regression in {len(diffs)} matched cases"]
        counts += [f"{len(outcome_parts[k])} {name}" for k, name in (("missing", "missing case(s)"),
                                                                   ("unmeasured", "missing measurement(s)"))
                   if outcome_parts.get(k)]
        lines += ["; ".join(counts), "failures by cause:", *render_findings(findings)]
    else:
        lines.append(f"no regression in {len(diffs)} matched cases")
    if outcome_parts.get("verdict"):
        lines.append(outcome_parts["verdict"])
    return "\n".join(lines)


def _describe(runs: Runs) -> str:
    ids = sorted(runs.runs)
    machines = sorted(set(runs.frame["machine_id"]))
    return f"{', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''} ({len(runs.frame)} records; machine " \
           f"{', '.join(machines) or 'none'})"


def _vacuous(criteria: Criteria, diffs: Sequence[CaseDiff]) -> list[Regression]:
    """An explicit threshold that could judge no matched case (nothing measured on both sides, or all unstable)."""
    if not criteria.explicit or "unmeasured" not in criteria.gates or not diffs:
        return []
    out = []
    for t in criteria.thresholds:
        if any(t.metric in d.judged for d in diffs):
            continue
        col = t.spec.column
        nb = sum(_finite(d.base.get(col)) for d in diffs)
        nc = sum(_finite(d.cur.get(col)) for d in diffs)
        unstable = sum(bool(d.base.get("unstable") or d.cur.get("unstable")) for d in diffs) if t.spec.latency else 0
        out.append(Regression(f"all {len(diffs)} matched cases", "unmeasured", nb, nc, "", (
            f"--fail-on {t} judged no case: {t.metric} measured in {nb} baseline and {nc} current case(s)"
            + (f", {unstable} unstable" if unstable else "") + "; measure it (e.g. pytest -m perf) or drop the "
            "threshold"), kind="unmeasured"))
    return out


def compare_outcome(baseline: str | Path, current: str | Path, fail_on: Sequence[str] = ()) -> CompareOutcome:
    """Compare two runs (or results dirs: newest record per case) case by case on the same machine.

    ``fail_on``: ``--fail-on`` items (``parse_criteria``). A passing case that now fails is always a regression;
    a latency threshold counts only when the current trials are also significantly slower.
    ``harness.report.compare_view.compare_runs`` adds the HTML view.
    """
    criteria = parse_criteria(fail_on)
    base_runs = load_runs([baseline], require_records=True)
    cur_runs = load_runs([current])
    diffs, only_b, only_c, missing = diff_runs(base_runs, cur_runs, criteria)
    regressions = [r for d in diffs for r in d.regressions]
    unmeasured = [r for d in diffs for r in d.unmeasured] + _vacuous(criteria, diffs)
    mb, mc = sorted(set(base_runs.frame["machine_id"])), sorted(set(cur_runs.frame["machine_id"]))
    disjoint = bool(mc) and not set(mb) & set(mc)
    if disjoint or "missing" not in criteria.gates:
        missing = []
    title = f"baseline {_describe(base_runs)}\ncurrent  {_describe(cur_runs)}"
    if disjoint:
        code, verdict = EXIT_NOTHING, (
            f"nothing to compare: the runs come from different machines (baseline {', '.join(mb)}, current "
            f"{', '.join(mc)}); cases are only compared on the same machine: set HARNESS_MACHINE_ID to the same "
            "name on both runs if they really are the same machine")
    elif regressions:
        code, verdict = EXIT_REGRESSION, f"FAIL (exit {EXIT_REGRESSION}): regression"
    elif missing or unmeasured:
        code, verdict = EXIT_MISSING, (f"FAIL (exit {EXIT_MISSING}): " + ", ".join(
            f"{len(x)} {name}" for x, name in ((missing, "missing case(s)"), (unmeasured, "missing measurement(s)"))
            if x) + " (switch off with --fail-on no-missing / no-unmeasured)")
    elif not diffs:
        code, verdict = EXIT_NOTHING, ("nothing to compare: no case (model, backend, precision, suite) appears in "
                                       "both runs")
    else:
        code, verdict = EXIT_OK, ""
    outcome = CompareOutcome(text="", regressions=regressions, exit_code=code, diffs=diffs, only_baseline=only_b,
                             only_current=only_c, thresholds=criteria.thresholds, title=title, missing=missing,
                             unmeasured=unmeasured, criteria=criteria, verdict=verdict)
    return replace(outcome, text=render_text(outcome.parts()))


__all__ = ["EXIT_MISSING", "EXIT_NOTHING", "EXIT_OK", "EXIT_REGRESSION", "METRICS", "CaseDiff", "CompareOutcome",
           "Regression", "compare_outcome", "diff_runs"]

