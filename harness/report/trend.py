"""Trends: p50 and verdicts of each case over the runs of one machine, ordered by run start."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.core.types import FAILING, PASSING, STATUS_COLORS, STATUS_ORDER
from harness.report.dashboard import NAV_JS, when
from harness.report.figures import FONT, combo_color, combo_label, status_colorscale
from harness.report.load import CASE_KEY, Runs, combos, load_runs, sort_cases
from harness.report.page import Column, figure, machine_selector, note, page, section, table, write_atomic
from harness.report.text import esc, pesc, pwrap

MAX_STEADY_ROWS = 40
"""Show every case in the verdict timeline up to this many; beyond it only cases whose verdict changed."""


def _runs_of(runs: Runs, machine: str) -> list[Any]:
    return runs.runs_of(machine)


def _run_label(info: Any) -> str:
    return f"{when(info.started_at)[:16]} {info.run_id[-6:]}"


def verdict_changes(frame: pd.DataFrame, order: dict[str, int]) -> pd.DataFrame:
    """Rows where a case's status differs from its previous run (``prev_status`` column added)."""
    f = frame.assign(run_pos=frame["run_id"].map(order)).sort_values(["run_pos", "started_at"])
    f = f.drop_duplicates([*CASE_KEY, "run_id"], keep="last")
    if f.empty:
        return f.assign(prev_status=pd.Series(dtype=object))
    f["prev_status"] = f.groupby(CASE_KEY)["status"].shift()
    return f[f["prev_status"].notna() & (f["prev_status"] != f["status"])]


def _direction(prev: str, cur: str) -> str:
    if prev in PASSING and cur not in PASSING | {"skipped", "xfail"}:
        return "worse"
    if cur in PASSING and prev in FAILING | {"unsupported", "xfail"}:
        return "better"
    return "changed"


def timeline(frame: pd.DataFrame, infos: list[Any], changes: pd.DataFrame) -> Any | None:
    """Case x run heat-table of statuses; a cell whose verdict changed is labelled with the change.

    None when there is no row to draw (no records, or more than MAX_STEADY_ROWS cases and none changed)."""
    import plotly.graph_objects as go

    labels = {r.run_id: _run_label(r) for r in infos}
    cases = sort_cases(frame.drop_duplicates(CASE_KEY))
    changed_keys = {tuple(r[k] for k in CASE_KEY) for r in changes.to_dict("records")}
    keys = [tuple(r[k] for k in CASE_KEY) for r in cases.to_dict("records")]
    if len(keys) > MAX_STEADY_ROWS:
        keys = [k for k in keys if k in changed_keys]
    if not keys:
        return None
    keyset = set(keys)
    # an explicit boolean array: an empty Python list would select columns, not rows
    shown = frame[np.array([tuple(v) in keyset for v in frame[CASE_KEY].itertuples(index=False)], dtype=bool)]
    infos = [i for i in infos if i.run_id in set(shown["run_id"])]
    statuses = set(shown["status"])
    present = [s for s in STATUS_ORDER if s in statuses] + sorted(statuses - set(STATUS_ORDER))
    index = {s: i for i, s in enumerate(present)}
    cells = {(tuple(r[k] for k in CASE_KEY), r["run_id"]): r for r in frame.to_dict("records")}
    change_at = {(tuple(r[k] for k in CASE_KEY), r["run_id"]): r["prev_status"] for r in changes.to_dict("records")}
    z, text, hover = [], [], []
    for key in keys:
        zr, tr, hr = [], [], []
        for info in infos:
            r = cells.get((key, info.run_id))
            if r is None:
                zr.append(None)
                tr.append("")
                hr.append(f"{pesc(' '.join(key[1:4]))}<br>{pesc(info.run_id)}: not run")
                continue
            prev = change_at.get((key, info.run_id))
            zr.append(index[r["status"]])
            tr.append(f"<b>{pesc(prev)} \u2192 {pesc(r['status'])}</b>" if prev else "")
            hr.append(f"<b>{pesc(' '.join(key[1:4]))}</b> [{pesc(key[4])}]<br>run {pesc(info.run_id)}<br>status "
                      f"<b>{pesc(r['status'])}</b>" + (f" (was {pesc(prev)})" if prev else "")
                      + (f"<br>{pwrap(r['reason'])}" if r["reason"] else ""))
        z.append(zr)
        text.append(tr)
        hover.append(hr)
    scale = status_colorscale(present)
    zmax = max(len(present), 1) - 0.5
    fig = go.Figure(go.Heatmap(
        z=z, x=[pesc(labels[i.run_id]) for i in infos], y=[pesc(" ".join(k[1:4]) + f" [{k[4]}]") for k in keys],
        text=text, texttemplate="%{text}", textfont={"size": 10}, hovertext=hover,
        hovertemplate="%{hovertext}<extra></extra>", colorscale=scale, zmin=-0.5, zmax=zmax, showscale=False,
        xgap=2, ygap=2))
    for s in present:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=pesc(s), hoverinfo="skip",
                                 marker={"symbol": "square", "size": 13, "color": STATUS_COLORS.get(s, "#999")}))
    fig.update_layout(title={"text": "Verdict of each case in each run (labelled cells: the verdict changed)", "x": 0,
                             "font": {"size": 14}}, template="plotly_white", font=FONT,
                      height=180 + 26 * max(len(keys), 3), margin={"l": 60, "r": 30, "t": 100, "b": 30},
                      legend={"orientation": "h", "x": 0, "y": -0.02, "yanchor": "top"})
    fig.update_xaxes(side="top", type="category", showgrid=False)
    fig.update_yaxes(autorange="reversed", type="category", automargin=True, showgrid=False)
    return fig


def p50_figure(model: str, frame: pd.DataFrame, infos: list[Any], changes: pd.DataFrame) -> Any:
    """p50 of each (backend, precision) of one model over run start; verdict changes as marked lines."""
    import plotly.graph_objects as go

    start = {r.run_id: datetime.fromtimestamp(r.started_at, UTC) for r in infos}
    fig = go.Figure()
    timed = frame[frame["has_latency"]]
    for b, p in combos(timed):
        s = timed[(timed["backend"] == b) & (timed["precision"] == p)].copy()
        s["t"] = s["run_id"].map(start)
        s = s.sort_values("t")
        hover = [f"<b>{pesc(model)}</b> {combo_label(b, p)}<br>run {pesc(r.run_id)}<br>p50 {r.p50_ms:.4g} ms "
                 f"(p99 {r.p99_ms:.4g})<br>status {pesc(r.status)}" + (" <b>unstable</b>" if r.unstable else "")
                 for r in s.itertuples()]
        fig.add_trace(go.Scatter(
            x=s["t"], y=s["p50_ms"], mode="lines+markers", name=combo_label(b, p), hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>", line={"color": combo_color(b, p), "width": 2},
            marker={"size": 8, "symbol": ["circle-open" if u else "circle" for u in s["unstable"]]}))
    mine = changes[changes["model"] == model]
    for t, group in mine.groupby(mine["run_id"].map(start)):
        worse = any(_direction(a, b) == "worse" for a, b in zip(group["prev_status"], group["status"], strict=True))
        label = "<br>".join(f"{pesc(r.backend)} {pesc(r.precision)}: {pesc(r.prev_status)}\u2192{pesc(r.status)}"
                            for r in group.itertuples())
        fig.add_vline(x=t.timestamp() * 1000, line={"color": "#d64541" if worse else "#2e9e4f", "dash": "dot",
                                                     "width": 2})
        fig.add_annotation(x=t, y=1, yref="paper", text=label, showarrow=False, xanchor="right", yanchor="top",
                           align="right", font={"size": 11, "color": "#d64541" if worse else "#2e7d32"},
                           bgcolor="rgba(255,255,255,0.85)")
    fig.update_layout(title={"text": f"{pesc(model)}: p50 latency per run (open marker = unstable; dotted line = "
                             "verdict change)", "x": 0, "font": {"size": 14}}, template="plotly_white", font=FONT,
                      height=380, margin={"l": 70, "r": 30, "t": 60, "b": 50}, showlegend=True,
                      legend={"title": {"text": "backend precision"}})
    fig.update_yaxes(title_text="p50, ms", rangemode="tozero")
    fig.update_xaxes(title_text="run start (UTC)")
    return fig


CHANGE_COLUMNS = [Column("started", "run started"), Column("run_id", "run"), Column("model", "model"),
                  Column("backend", "backend"), Column("precision", "precision"), Column("suite", "suite"),
                  Column("prev_status", "was", status=True), Column("status", "now", status=True),
                  Column("direction", "direction"), Column("reason", "reason", wide=True)]


def machine_trend(runs: Runs, machine: str, index: int) -> str:
    """The trend views of one machine."""
    frame = runs.for_machine(machine)
    infos = _runs_of(runs, machine)
    order = {r.run_id: i for i, r in enumerate(infos)}
    frame = frame[frame["run_id"].isin(list(order))]
    changes = verdict_changes(frame, order)
    prefix = f"m{index}"
    start = {r.run_id: when(r.started_at) for r in infos}
    rows = [{**r, "started": start[r["run_id"]], "direction": _direction(r["prev_status"], r["status"])}
            for r in changes.to_dict("records")]
    intro = (f"{len(infos)} run(s) of machine {machine}, from {when(infos[0].started_at)} to "
             f"{when(infos[-1].started_at)}." if infos else "")
    parts = [f'<div class="machine" data-machine="{esc(machine)}" data-index="{index}">',
             f'<div class="machine-title">Machine {esc(machine)}</div>',
             section(f"verdicts-{prefix}", "Verdict changes", intro,
                     _timeline_html(frame, infos, changes, prefix)
                     + table(CHANGE_COLUMNS, rows, f"{prefix}-changes", empty="no verdict changed between runs"))]
    figs = [figure(p50_figure(m, frame[frame["model"] == m], infos, changes), f"{prefix}-p50-{i}")
            for i, m in enumerate(sorted(frame.loc[frame["has_latency"], "model"].unique()))]
    parts.append(section(f"latency-{prefix}", "p50 latency over time", "One chart per model, one line per backend "
                         "and precision; a failing run leaves a gap.",
                         "".join(figs) or note("no performance data: these runs measured no latency")))
    parts.append("</div>")
    return "".join(parts)


def _timeline_html(frame: pd.DataFrame, infos: list[Any], changes: pd.DataFrame, prefix: str) -> str:
    fig = timeline(frame, infos, changes)
    if fig is None:
        cases = len(frame.drop_duplicates(CASE_KEY))
        return note(f"no verdict changed in {cases} case(s) over {len(infos)} run(s)" if cases else
                    "no records of this machine in these runs")
    return figure(fig, f"{prefix}-timeline")


def trend_report(paths: Sequence[str | Path], out: str | Path) -> Path:
    """Write the trend page of the runs under ``paths`` (grouped by machine) to ``out``."""
    runs = load_runs(paths)
    return write_atomic(Path(out), render_trend(runs))


def render_trend(runs: Runs, title: str = "Inference harness trend") -> str:
    """The trend page of loaded runs (grouped by machine)."""
    machines = [m for m in runs.machines() if len(runs.for_machine(m))]
    body = "".join(machine_trend(runs, m, i) for i, m in enumerate(machines)) or section(
        "verdicts-m0", "Trend", "", note("these runs hold no records yet"))
    subtitle = (f"{len(runs.runs)} run(s) on {len(machines)} machine(s); generated "
                f"{when(datetime.now(UTC).timestamp())}")
    nav = [("verdicts", "Verdicts"), ("latency", "Latency")]
    return page(title, subtitle, body + NAV_JS, nav=nav, selector=machine_selector(machines))
