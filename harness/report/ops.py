"""Operator scoreboard: ONNX conformance records (suite ``onnx_conformance``) per engine, op type and opset."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from harness.core.types import PASSING, backend_sort_key
from harness.report.load import latest
from harness.report.page import Column, figure, note, table
from harness.report.text import esc, pesc

SUITE = "onnx_conformance"
NOT_RUN = frozenset({"skipped", "unsupported"})
_SCALE = [[0.0, "#f08a84"], [0.5, "#f7d57a"], [0.8, "#c5e39a"], [1.0, "#7fcb92"]]  # light: dark text reads


def op_rows(frame: pd.DataFrame, *, per_op: bool = True) -> pd.DataFrame:
    """One row per (record, op type), or per record; no op types count as ``(unknown)``; cases not run
    (skipped, or unsupported by the engine: not implemented is not wrong) excluded."""
    frame = frame[(frame["suite"] == SUITE) & ~frame["status"].isin(NOT_RUN)]
    rows = []
    for r in frame.itertuples():
        for op in (r.op_types or ["(unknown)"]) if per_op else [", ".join(r.op_types)]:
            rows.append({"op": op, "backend": r.backend, "opset": r.opset, "passed": r.status in PASSING,
                         "status": r.status, "test": r.model, "reason": r.reason})
    return pd.DataFrame(rows, columns=["op", "backend", "opset", "passed", "status", "test", "reason"])


def _rate_heatmap(rows: pd.DataFrame, key: str, title: str, label: str) -> Any:
    import plotly.graph_objects as go

    backends = sorted(rows["backend"].unique(), key=backend_sort_key)
    keys = sorted(rows[key].unique(), key=lambda v: (str(type(v)), v))
    grouped = rows.groupby([key, "backend"])["passed"].agg(["sum", "count"])
    z, text, hover = [], [], []
    for k in keys:
        zr, tr, hr = [], [], []
        for b in backends:
            if (k, b) not in grouped.index:
                zr.append(None)
                tr.append("")
                hr.append(f"{pesc(k)} on {pesc(b)}: not tested")
                continue
            passed, count = grouped.loc[(k, b)]
            zr.append(passed / count)
            tr.append(f"{passed}/{count}")
            hr.append(f"<b>{pesc(label)} {pesc(_show(k))}</b> on {pesc(b)}<br>{passed} of {count} tests pass "
                      f"({passed / count:.0%})")
        z.append(zr)
        text.append(tr)
        hover.append(hr)
    fig = go.Figure(go.Heatmap(
        z=z, x=[pesc(b) for b in backends], y=[pesc(_show(k)) for k in keys], text=text, texttemplate="%{text}",
        textfont={"color": "#1d2330"},
        hovertext=hover, hovertemplate="%{hovertext}<extra></extra>", colorscale=_SCALE, zmin=0, zmax=1,
        xgap=2, ygap=2, colorbar={"title": {"text": "pass rate"}, "tickformat": ".0%", "thickness": 14}))
    fig.update_layout(title={"text": title, "x": 0, "font": {"size": 14}}, template="plotly_white",
                      height=150 + 24 * max(len(keys), 3), margin={"l": 120, "r": 30, "t": 90, "b": 40},
                      font={"size": 12}, **({"width": 360 + 170 * len(backends)} if len(backends) <= 5 else {}))
    fig.update_xaxes(side="top", type="category")
    fig.update_yaxes(autorange="reversed", type="category", automargin=True)
    return fig


def _show(value: Any) -> str:
    if isinstance(value, float):
        return "unknown" if math.isnan(value) else str(int(value))
    return str(value)


def scoreboard(frame: pd.DataFrame, prefix: str) -> str:
    """The scoreboard section body (empty string when there are no operator records)."""
    frame = latest(frame[frame["suite"] == SUITE])
    rows = op_rows(frame)
    recs = frame
    if recs.empty:
        return ""
    if rows.empty:
        return note("every operator test was skipped")
    not_run = recs[recs["status"].isin(NOT_RUN)].groupby("backend")["status"].count()
    per_engine = recs[~recs["status"].isin(NOT_RUN)].groupby("backend")["status"].agg(
        passed=lambda s: int(s.isin(PASSING).sum()), total="count")
    summary = " ".join(
        f'<span class="pill">{esc(b)}: {int(v.passed)}/{int(v.total)} run tests pass ({v.passed / v.total:.0%}); '
        f'{int(not_run.get(b, 0))} not run (unsupported/skipped)</span>'
        for b, v in per_engine.iterrows())
    parts = [f'<div class="badges">{summary}</div>',
             figure(_rate_heatmap(rows, "op", "Pass rate by operator type and engine", "op"), f"{prefix}-ops"),
             figure(_rate_heatmap(op_rows(frame, per_op=False), "opset",
                                  "Pass rate by opset and engine", "opset"), f"{prefix}-opsets")]
    failing = recs[~recs["status"].isin(PASSING | NOT_RUN)]
    cols = [Column("test", "test"), Column("ops", "op types"), Column("opset", "opset", numeric=True),
            Column("backend", "engine"), Column("status", "status", status=True),
            Column("reason", "engine error", wide=True)]
    fail_rows = [{"test": r.model, "ops": ", ".join(r.op_types), "opset": r.opset, "backend": r.backend,
                  "status": r.status, "reason": r.reason} for r in failing.itertuples()]
    parts.append("<h3>Failing operator tests</h3>")
    parts.append(table(cols, fail_rows, f"{prefix}-opfail", empty="no failing operator tests"))
    return "".join(parts)

