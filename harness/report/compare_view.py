"""The HTML view of a run-vs-run comparison."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from harness.report.page import Column, figure, note, page, section, table, write_atomic
from harness.report.regress import EXIT_NOTHING, CaseDiff, CompareOutcome, compare_outcome, table_rows
from harness.report.text import esc, pesc, pwrap


def _pct(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else esc(f"{value:+.1%}")


def _p(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else esc(f"{value:.2g}")


def _outcome(value: Any) -> str:
    cls = {"REGRESSION": "alert", "UNMEASURED": "alert", "better": "ok"}.get(str(value), "")
    return f'<span class="{cls}">{esc(value)}</span>'


COLUMNS = [
    Column("outcome", "result", render=_outcome), Column("case", "case"),
    Column("base_status", "baseline verdict", status=True), Column("cur_status", "current verdict", status=True),
    Column("base_p50", "baseline p50 ms", numeric=True), Column("cur_p50", "current p50 ms", numeric=True),
    Column("p50_change", "p50 change", numeric=True, render=_pct),
    Column("p_value", "p (slower)", numeric=True, render=_p), Column("evidence", "evidence"),
    Column("p99_change", "p99 change", numeric=True, render=_pct),
    Column("mem_change", "peak MB change", numeric=True, render=_pct), Column("cosine", "cosine"),
    Column("why", "why", wide=True),
]


def diffs_frame(diffs: Sequence[CaseDiff]) -> pd.DataFrame:
    """One row per matched case with the compared values (for the HTML view)."""
    rows = []
    for d, cells in zip(diffs, table_rows(diffs), strict=True):
        sig = d.significance
        trials = sig is not None and not sig.weak
        rows.append({"outcome": d.outcome, "case": d.label, "model": d.key[1], "backend": d.key[2],
                     "precision": d.key[3], "base_status": d.base["status"], "cur_status": d.cur["status"],
                     "base_p50": sig.baseline_ms if trials else d.base.get("p50_ms"),
                     "cur_p50": sig.current_ms if trials else d.cur.get("p50_ms"),
                     "p50_change": d.change("p50_ms"), "p99_change": d.change("p99_ms"),
                     "mem_change": d.change("peak_rss_mb"), "p_value": sig.p_value if sig else math.nan,
                     "evidence": "" if sig is None else "weak" if sig.weak else "trials",
                     "cosine": cells[8], "why": cells[9]})
    return pd.DataFrame(rows)


def _change_figure(frame: Any) -> Any:
    import plotly.graph_objects as go

    timed = frame[frame["p50_change"].notna()].sort_values("p50_change")
    colours = ["#d64541" if o == "REGRESSION" else "#2e9e4f" if o == "better" else "#9aa3b2"
               for o in timed["outcome"]]
    hover = [f"<b>{pesc(r.case)}</b><br>p50 {r.base_p50:.4g} -> {r.cur_p50:.4g} ms ({r.p50_change:+.1%})"
             f"<br>p (slower) {r.p_value:.2g}<br>{pesc(r.outcome)}<br>{pwrap(r.why)}" for r in timed.itertuples()]
    fig = go.Figure(go.Bar(x=timed["p50_change"] * 100, y=[pesc(c) for c in timed["case"]], orientation="h",
                           marker={"color": colours}, hovertext=hover, hovertemplate="%{hovertext}<extra></extra>"))
    fig.add_vline(x=0, line={"color": "#444", "width": 1})
    fig.update_layout(title={"text": "p50 change per case, % (red = regression: beyond threshold and significant; "
                             "grey = within noise or threshold)", "x": 0, "font": {"size": 14}},
                      template="plotly_white", height=120 + 22 * max(len(timed), 4),
                      margin={"l": 60, "r": 30, "t": 60, "b": 50}, font={"size": 12})
    fig.update_xaxes(title_text="p50 change, %", ticksuffix="%", zeroline=False)
    fig.update_yaxes(type="category", automargin=True)
    return fig


def _findings(parts: dict[str, Any]) -> str:
    """Regressions, missing cases and measurements, grouped by the record's cause."""
    groups: dict[str, list[Any]] = {}
    for f in [*parts["regressions"], *parts.get("missing", []), *parts.get("unmeasured", [])]:
        groups.setdefault(f.group, []).append(f)
    return "".join(f"<h3>{esc(name)} ({len(items)})</h3><ul>" + "".join(
        f"<li><b>{esc(f.kind)}</b> {esc(f)}</li>" for f in items[:200]) + "</ul>"
        for name, items in sorted(groups.items(), key=lambda kv: -len(kv[1])))


def write_compare_html(out: Path, parts: dict[str, Any], exit_code: int) -> Path:
    """Write the comparison page and return its path."""
    frame = diffs_frame(parts["diffs"])
    regs = parts["regressions"]
    if exit_code == EXIT_NOTHING:
        banner = f'<p class="alert">{esc(parts.get("verdict") or "nothing to compare")}</p>'
    elif exit_code:
        counts = [f"{len(regs)} regression(s)"] + [f"{len(parts[k])} {k}" for k in ("missing", "unmeasured")
                                                   if parts.get(k)]
        banner = f'<p class="alert">exit {exit_code}: {esc(", ".join(counts))}</p>' + _findings(parts)
    else:
        banner = f'<p class="ok">no regression in {len(frame)} matched cases</p>'
    thresholds = str(parts.get("criteria") or ", ".join(map(str, parts["thresholds"])))
    summary = (banner + note(f"fail on: {thresholds}. Latency counts as a regression only when it is beyond the "
                             "threshold AND the trial medians are significantly slower (one-sided Welch t-test on log "
                             "trial medians, alpha 0.05); records without trials fall back to Mann-Whitney over the "
                             "iterations of one process (weak evidence); unstable cells are never gated. A case that "
                             "passed and now fails is always a regression; missing cases and measurements exit 3.")
               + f'<pre class="text">{esc(parts["title"])}</pre>')
    body = section("summary", "Comparison", "", summary)
    if len(frame) and frame["p50_change"].notna().any():
        body += section("latency", "Latency change", "", figure(_change_figure(frame), "cmp-p50"))
    rows = frame.to_dict("records") if len(frame) else []
    body += section("cases", "Matched cases", "", table(
        COLUMNS, rows, "cmp-cases", empty="no matched cases",
        row_class=lambda r: {"REGRESSION": "regression", "UNMEASURED": "regression",
                             "better": "improved"}.get(r["outcome"], "")))
    extra = "".join(f"<h3>{esc(name)} ({len(keys)})</h3><p>{esc(', '.join(keys))}</p>"
                    for name, keys in (("only in baseline", parts["only_baseline"]),
                                       ("only in current", parts["only_current"])) if keys)
    if extra:
        body += section("unmatched", "Unmatched cases", "", extra)
    nav = [("summary", "Summary"), ("latency", "Latency"), ("cases", "Cases")]
    return write_atomic(out, page("Run comparison", thresholds, body, nav=nav))


def compare_runs(baseline: str | Path, current: str | Path, fail_on: Sequence[str] = (),
                 out: str | Path | None = None) -> CompareOutcome:
    """``regress.compare_outcome`` plus the HTML view written to ``out`` when given."""
    outcome = compare_outcome(baseline, current, fail_on)
    if out is None:
        return outcome
    return replace(outcome, html=write_compare_html(Path(out), outcome.parts(), outcome.exit_code))
