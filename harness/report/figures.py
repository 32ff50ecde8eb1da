"""Plotly figures of one machine's records: conformance matrix, latency, speed-up, trade-off, memory.

Every string taken from a record goes through ``pesc``/``pwrap`` before it reaches
plotly, which renders a subset of HTML in labels and hover text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from harness.core.types import STATUS_COLORS, STATUS_ORDER
from harness.report.load import combos, latest, sort_cases
from harness.report.text import fmt, pesc, pwrap

FONT = {"family": "system-ui, -apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif", "size": 12}
_BACKEND_HUES = {"torch": ["#c2410c", "#f97316", "#fdba74"], "ort": ["#1d4ed8", "#3b82f6", "#93c5fd"],
                 "ov": ["#6d28d9", "#8b5cf6", "#c4b5fd"], "ncnn": ["#047857", "#10b981", "#6ee7b7"],
                 "trt": ["#b91c1c", "#ef4444", "#fca5a5"]}
_OTHER_HUES = [["#374151", "#6b7280", "#d1d5db"], ["#a16207", "#eab308", "#fde047"],
               ["#be185d", "#ec4899", "#f9a8d4"]]
_PRECISION_SHADE = {"fp32": 0, "fp16": 1, "bf16": 1, "int8": 2}
PRECISION_SYMBOL = {"fp32": "circle", "fp16": "square", "bf16": "square-open", "int8": "diamond"}
ERROR_FLOOR = 1e-9
FALLBACK_PATTERN = "x"
"""Bars of fallback cases (outputs matched, requested precision not executed) are cross-hatched everywhere."""
TRUE_PASS = ("pass", "xpass")
RAN = ("crash", "timeout")
"""Statuses whose process ran the engine even without an executed precision (a crash may be the OOM killer)."""


def perf_cases(frame: pd.DataFrame) -> pd.DataFrame:
    """One latency row per (machine, model, backend, precision): the perf suite's isolated measurement where
    there is one, else the newest quick one of another suite (the conformance suite times every passing case)."""
    timed = latest(frame, with_latency=True)
    if timed.empty:
        return timed
    timed = timed.assign(_perf=(timed["suite"] == "perf").astype(int))
    timed = timed.sort_values(["_perf", "started_at"], kind="stable")
    timed = timed.drop_duplicates(["machine_id", "model", "backend", "precision"], keep="last")
    return sort_cases(timed.drop(columns="_perf"))


def memory_cases(frame: pd.DataFrame) -> pd.DataFrame:
    """The newest record of each case with peak memory kept only where the engine ran: a case that was skipped
    or unsupported never loaded anything, so the idle process's few MB are not its memory."""
    cases = latest(frame)
    ran = (cases["executed_precision"] != "") | cases["status"].isin(RAN)
    return cases.assign(peak_rss_mb=cases["peak_rss_mb"].where(ran))


def best_per_model(perf: pd.DataFrame) -> list[dict[str, Any]]:
    """Per model: the fastest true pass (backend, precision) with its p50, speed-up over PyTorch FP32, cosine and
    size, plus the fastest fallback when it is faster still (outputs matched but the requested precision did
    not run: not a deployment choice)."""
    sp = speedups(perf)
    out = []
    for model in sorted(sp["model"].unique()):
        rows = sp[sp["model"] == model]
        ok = rows[rows["status"].isin(TRUE_PASS)]
        best = ok.loc[ok["p50_ms"].idxmin()] if len(ok) else None
        fb = rows[rows["status"] == "fallback"]
        fast_fb = fb.loc[fb["p50_ms"].idxmin()] if len(fb) else None
        entry: dict[str, Any] = {"model": model, "timed": len(rows), "passing": len(ok)}
        if best is not None:
            entry.update(best=f"{best['backend']} {best['precision']}", status=best["status"],
                         executed=best["executed_precision"], p50_ms=best["p50_ms"], cv=best["cv"],
                         n=best["n"], unstable=bool(best["unstable"]), trials_p50_ms=best.get("trials_p50_ms"),
                         speedup_vs_torch=best["speedup_vs_torch"],
                         cosine=best["cosine"], max_abs=best["max_abs"], artifact_mb=best["artifact_mb"],
                         peak_rss_mb=best["peak_rss_mb"], torch_fp32_p50=best["torch_fp32_p50"])
        if len(ok) > 1:
            second = ok.drop(index=ok["p50_ms"].idxmin())
            second = second.loc[second["p50_ms"].idxmin()]
            entry["runner_up"] = (f"next: {second['backend']} {second['precision']} {fmt(second['p50_ms'])} ms "
                                  f"({second['p50_ms'] / best['p50_ms']:.2f}x)")
        if fast_fb is not None and (best is None or fast_fb["p50_ms"] < best["p50_ms"]):
            entry["fallback_note"] = (f"{fast_fb['backend']} {fast_fb['precision']} is faster ({fmt(fast_fb['p50_ms'])}"
                                      f" ms) but a FALLBACK: executed {fast_fb['executed_precision'] or 'unknown'}")
        out.append(entry)
    return out


def phase_rows(phases: dict[str, Any], key: str = "by_backend") -> list[dict[str, Any]]:
    """Rows of ``run.json``'s ``phases_s[key]`` (seconds per phase per suite or backend), largest total first."""
    rows = []
    for name, bucket in (phases.get(key) or {}).items():
        seconds = {k: float(v) for k, v in bucket.items() if k != "cases" and isinstance(v, int | float)}
        rows.append({"group": name, "cases": bucket.get("cases"), "total_s": sum(seconds.values()), **seconds})
    return sorted(rows, key=lambda r: -r["total_s"])


def combo_label(backend: str, precision: str) -> str:
    """``ort fp16`` (escaped for plotly)."""
    return f"{pesc(backend)} {pesc(precision)}"


def combo_color(backend: str, precision: str) -> str:
    """Backend decides the hue, precision the shade (dark fp32 .. light int8)."""
    hues = _BACKEND_HUES.get(backend) or _OTHER_HUES[sum(map(ord, backend)) % len(_OTHER_HUES)]
    return hues[_PRECISION_SHADE.get(precision, 1)]


def backend_color(backend: str) -> str:
    """The fp32 shade of a backend's hue."""
    return combo_color(backend, "fp32")


def _layout(fig: Any, title: str, height: int, **extra: Any) -> None:
    fig.update_layout(title={"text": title, "x": 0, "xanchor": "left", "font": {"size": 14}}, height=height,
                      template="plotly_white", font=FONT, margin={"l": 70, "r": 30, "t": 60, "b": 60},
                      hoverlabel={"align": "left", "font": {"size": 12}}, **extra)


def conformance_matrix(frame: pd.DataFrame) -> Any:
    """Model x (backend, precision) heat-table of statuses; hover shows the evidence."""
    import plotly.graph_objects as go

    pairs = combos(frame)
    has_suites = frame["suite"].nunique() > 1
    frame = frame.assign(row=frame["model"] + (" [" + frame["suite"] + "]" if has_suites else ""))
    rows = sorted(frame["row"].unique())
    present = [s for s in STATUS_ORDER if s in set(frame["status"])]
    present += sorted(set(frame["status"]) - set(present))
    index = {s: i for i, s in enumerate(present)}
    cells = {(r.row, r.backend, r.precision): r for r in frame.itertuples()}
    z, text, hover = [], [], []
    for row in rows:
        zr, tr, hr = [], [], []
        for b, p in pairs:
            r = cells.get((row, b, p))
            if r is None:
                zr.append(None)
                tr.append("")
                hr.append(f"{pesc(row)} / {combo_label(b, p)}<br>not run")
                continue
            zr.append(index[r.status])
            short = r.executed_precision if r.executed_precision and r.executed_precision != p else ""
            tr.append(pesc(r.status) + (f"<br><sub>{pesc(short, 18)}</sub>" if short else ""))
            hr.append(_cell_hover(r))
        z.append(zr)
        text.append(tr)
        hover.append(hr)
    scale = status_colorscale(present)
    zmax = max(len(present), 1) - 0.5
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"{combo_label(b, p)}" for b, p in pairs], y=[pesc(r) for r in rows], text=text,
        texttemplate="%{text}", textfont={"size": 11}, hovertext=hover, hovertemplate="%{hovertext}<extra></extra>",
        colorscale=scale or [[0, "#fff"], [1, "#fff"]], zmin=-0.5, zmax=zmax, xgap=2, ygap=2, showscale=False))
    for s in present:  # a legend entry per status present (a discrete colour bar is hard to read)
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=pesc(s), hoverinfo="skip",
                                 marker={"symbol": "square", "size": 13, "color": STATUS_COLORS.get(s, "#999999")}))
    _layout(fig, "Conformance: status of every model on every backend and precision",
            height=170 + 34 * max(len(rows), 3),
            legend={"orientation": "h", "x": 0, "y": -0.02, "yanchor": "top", "title": {"text": "status "}})
    fig.update_xaxes(side="top", type="category", tickangle=0, showgrid=False)
    fig.update_yaxes(autorange="reversed", type="category", automargin=True, showgrid=False)
    fig.update_layout(margin={"t": 100, "b": 20})
    return fig


def _cell_hover(r: Any) -> str:
    lines = [f"<b>{pesc(r.model)}</b>  {combo_label(r.backend, r.precision)}  [{pesc(r.suite)}]",
             f"status: <b>{pesc(r.status)}</b>"]
    if r.executed_precision:
        lines.append(f"executed: {pesc(r.executed_precision)} ({pesc(r.precision_match)})")
    if not math.isnan(r.cosine):
        lines.append(f"cosine: {r.cosine:.6f}   max abs: {fmt(r.max_abs)}   max rel: {fmt(r.max_rel)}")
    if not math.isnan(r.mismatch_fraction) and r.mismatch_fraction > 0:
        lines.append(f"out of tolerance: {r.mismatch_fraction:.2%}")
    if not math.isnan(r.error_vs_fp64_ratio):
        lines.append(f"error vs fp64 ratio: {fmt(r.error_vs_fp64_ratio)}")
    if r.known_reason:
        lines.append(f"known failure: {pwrap(r.known_reason, limit=160)}")
    if r.reason:
        lines.append(f"reason: {pwrap(r.reason)}")
    if r.backend_version:
        lines.append(f"version: {pesc(r.backend_version)}")
    return "<br>".join(lines)


def _positions(n_groups: int, n_series: int) -> tuple[list[float], float]:
    width = 0.84 / max(n_series, 1)
    return [(j - (n_series - 1) / 2) * width for j in range(n_series)], width


def _model_axis(fig: Any, models: list[str], **kwargs: Any) -> None:
    fig.update_xaxes(tickvals=list(range(len(models))), ticktext=[pesc(m) for m in models],
                     range=[-0.6, len(models) - 0.4], showgrid=False, **kwargs)


def _perf_hover(r: Any) -> str:
    lines = [f"<b>{pesc(r.model)}</b>  {combo_label(r.backend, r.precision)}",
             f"p50 {fmt(r.p50_ms)} ms   p90 {fmt(r.p90_ms)} ms   p99 {fmt(r.p99_ms)} ms",
             f"min {fmt(r.min_ms)} ms   mean {fmt(r.mean_ms)} ms   CV {fmt(r.cv)}   n {fmt(r.n)}",
             f"threads {fmt(r.threads)}   batch {fmt(r.batch)}   executed {pesc(r.executed_precision)}"]
    if r.status == "fallback":
        lines.append("<b>FALLBACK</b>: outputs match, the requested precision did not execute")
    if r.unstable:
        lines.append("<b>UNSTABLE measurement</b> (high variation): do not read as a fact")
    if not math.isnan(r.peak_rss_mb):
        lines.append(f"peak memory {fmt(r.peak_rss_mb)} MB")
    return "<br>".join(lines)


def latency(perf: pd.DataFrame) -> Any:
    """p50 bars per model, one bar per (backend, precision); whisker to p99, tick at p90; unstable hatched."""
    import plotly.graph_objects as go

    models = sorted(perf["model"].unique())
    pairs = combos(perf)
    offsets, width = _positions(len(models), len(pairs))
    fig = go.Figure()
    for (b, p), off in zip(pairs, offsets, strict=True):
        sub = perf[(perf["backend"] == b) & (perf["precision"] == p)]
        xs = [models.index(m) + off for m in sub["model"]]
        rows = list(sub.itertuples())
        colour = combo_color(b, p)
        fig.add_trace(go.Bar(
            x=xs, y=sub["p50_ms"], width=width * 0.92, name=combo_label(b, p), legendgroup=f"{b}|{p}",
            marker={"color": colour, "pattern": {"shape": [FALLBACK_PATTERN if r.status == "fallback" else "/"
                                                           if r.unstable else "" for r in rows], "fgcolor": "#222"}},
            error_y={"type": "data", "symmetric": False, "array": (sub["p99_ms"] - sub["p50_ms"]).clip(lower=0),
                     "arrayminus": [0] * len(sub), "thickness": 1.2, "width": 3, "color": "#333"},
            hovertext=[_perf_hover(r) for r in rows], hovertemplate="%{hovertext}<extra></extra>"))
        fig.add_trace(go.Scatter(
            x=xs, y=sub["p90_ms"], mode="markers", legendgroup=f"{b}|{p}", showlegend=False,
            marker={"symbol": "line-ew", "size": 9, "line": {"width": 2, "color": "#333"}}, hoverinfo="skip"))
    lo = perf["p50_ms"].min()
    hi = perf["p99_ms"].max()
    log = bool(lo > 0 and hi / lo > 30)
    _layout(fig, "Latency per call: bar = p50, tick = p90, whisker = p99 (/ = unstable, x = fallback)", 470,
            barmode="overlay", legend={"title": {"text": "backend precision"}})
    _model_axis(fig, models)
    fig.update_yaxes(title_text="latency, ms" + (" (log scale)" if log else ""), type="log" if log else "linear")
    return fig


def speedups(perf: pd.DataFrame) -> pd.DataFrame:
    """Speed-up of each measured case vs PyTorch FP32 and vs the same backend's FP32 (same model)."""
    p50 = {(r.model, r.backend, r.precision): r.p50_ms for r in perf.itertuples()}
    out = perf.copy()
    torch_ref = [p50.get((m, "torch", "fp32"), math.nan) for m in out["model"]]
    own_ref = [p50.get((m, b, "fp32"), math.nan) for m, b in zip(out["model"], out["backend"], strict=True)]
    out["torch_fp32_p50"] = torch_ref
    out["own_fp32_p50"] = own_ref
    out["speedup_vs_torch"] = out["torch_fp32_p50"] / out["p50_ms"]
    out["speedup_vs_own_fp32"] = out["own_fp32_p50"] / out["p50_ms"]
    return out


def speedup(perf: pd.DataFrame) -> Any:
    """Two panels: speed-up vs PyTorch FP32, and vs the backend's own FP32, per precision."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    sp = speedups(perf)
    models = sorted(sp["model"].unique())
    pairs = combos(sp)
    offsets, width = _positions(len(models), len(pairs))
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1, subplot_titles=(
        "vs PyTorch FP32 of the same model (>1 = faster)", "vs the same backend at FP32 (>1 = lower precision pays)"))
    values, shown = [], set()
    for (b, p), off in zip(pairs, offsets, strict=True):
        sub = sp[(sp["backend"] == b) & (sp["precision"] == p)]
        for row, col, ref, ref_name in ((1, "speedup_vs_torch", "torch_fp32_p50", "torch fp32"),
                                        (2, "speedup_vs_own_fp32", "own_fp32_p50", f"{b} fp32")):
            s = sub[sub[col].notna() & ((row == 1) | (sub["precision"] != "fp32"))]
            if s.empty:
                continue
            values += list(s[col])
            hover = [f"<b>{pesc(r.model)}</b>  {combo_label(b, p)}<br>speed-up <b>{getattr(r, col):.2f}x</b>"
                     f"<br>p50 {fmt(r.p50_ms)} ms vs {pesc(ref_name)} {fmt(getattr(r, ref))} ms"
                     + ("<br><b>FALLBACK</b>: executed " + pesc(r.executed_precision or "unknown")
                        if r.status == "fallback" else "")
                     + ("<br><b>unstable</b> measurement" if r.unstable else "") for r in s.itertuples()]
            fig.add_trace(go.Bar(
                x=[models.index(m) + off for m in s["model"]], y=s[col], width=width * 0.92,
                name=combo_label(b, p), legendgroup=f"{b}|{p}", showlegend=(b, p) not in shown,
                marker={"color": combo_color(b, p), "pattern": {
                    "shape": [FALLBACK_PATTERN if st == "fallback" else "" for st in s["status"]], "fgcolor": "#222"}},
                hovertext=hover, hovertemplate="%{hovertext}<extra></extra>"), row=row, col=1)
            shown.add((b, p))
    for row in (1, 2):
        fig.add_hline(y=1, line={"color": "#444", "width": 1, "dash": "dash"}, row=row, col=1)
    finite = [v for v in values if v and math.isfinite(v) and v > 0]
    log = bool(finite and max(finite) / min(finite) > 12)
    _layout(fig, "Speed-up (ratio of p50 latencies; x-hatched = fallback, not the requested precision)", 640,
            barmode="overlay",
            legend={"title": {"text": "backend precision"}})
    for axis in ("xaxis", "xaxis2"):
        fig.layout[axis].update(tickvals=list(range(len(models))), ticktext=[pesc(m) for m in models],
                                range=[-0.6, len(models) - 0.4], showgrid=False)
    fig.update_yaxes(title_text="speed-up, x" + (" (log)" if log else ""), type="log" if log else "linear")
    return fig


def tradeoff(perf: pd.DataFrame) -> tuple[Any, str]:
    """Error vs speed-up scatter, marker area = peak memory; returns (figure, what the error axis is)."""
    import plotly.graph_objects as go

    sp = speedups(perf)
    acc_ref = {r.model: r.accuracy for r in sp.itertuples()
               if r.backend == "torch" and r.precision == "fp32" and not math.isnan(r.accuracy)}
    use_accuracy = any(m in acc_ref for m in sp.loc[sp["accuracy"].notna(), "model"])
    if use_accuracy:
        sp = sp[sp["accuracy"].notna() & sp["model"].isin(list(acc_ref))]
        sp = sp.assign(error=[acc_ref[m] - a for m, a in zip(sp["model"], sp["accuracy"], strict=True)])
        axis = "accuracy drop vs PyTorch FP32 (task metric, lower is better)"
    else:
        sp = sp.assign(error=(1.0 - sp["cosine"]).clip(lower=ERROR_FLOOR))
        axis = f"1 - cosine vs PyTorch FP32 (log; floored at {ERROR_FLOOR:g})"
    sp = sp[sp["speedup_vs_torch"].notna() & sp["error"].notna()]
    fig = go.Figure()
    mem = sp["peak_rss_mb"].dropna()
    sizeref = 2.0 * (mem.max() if len(mem) else 1.0) / 42**2
    for b in dict.fromkeys(b for b, _ in combos(sp)):
        s = sp[sp["backend"] == b]
        hover = [f"<b>{pesc(r.model)}</b>  {combo_label(r.backend, r.precision)}<br>speed-up vs torch fp32 "
                 f"{r.speedup_vs_torch:.2f}x<br>error {fmt(r.error)}   cosine {r.cosine:.6f}<br>peak memory "
                 f"{fmt(r.peak_rss_mb)} MB   status {pesc(r.status)}"
                 + ("  <b>FALLBACK</b> (orange outline)" if r.status == "fallback" else "") for r in s.itertuples()]
        fig.add_trace(go.Scatter(
            x=s["speedup_vs_torch"], y=s["error"], mode="markers", name=pesc(b),
            marker={"size": s["peak_rss_mb"].fillna(mem.min() if len(mem) else 10.0), "sizemode": "area",
                    "sizeref": sizeref, "sizemin": 5, "color": backend_color(b), "opacity": 0.8,
                    "symbol": [PRECISION_SYMBOL.get(p, "circle") for p in s["precision"]],
                    "line": {"width": [3 if st == "fallback" else 1 for st in s["status"]],
                             "color": [STATUS_COLORS["fallback"] if st == "fallback" else "#222"
                                       for st in s["status"]]}},
            hovertext=hover, hovertemplate="%{hovertext}<extra></extra>"))
    _layout(fig, "Trade-off: error vs speed-up (marker area = peak memory; circle fp32, square fp16, "
            "diamond int8)", 520, legend={"title": {"text": "backend"}})
    fig.update_xaxes(title_text="speed-up vs PyTorch FP32, x (log)", type="log")
    fig.update_yaxes(title_text=axis, type="linear" if use_accuracy else "log", exponentformat="power")
    return fig, axis


def memory(frame: pd.DataFrame) -> Any:
    """Peak memory and artifact size per model, one bar per (backend, precision)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    frame = frame[frame["peak_rss_mb"].notna() | frame["artifact_mb"].notna()]
    models = sorted(frame["model"].unique())
    pairs = combos(frame)
    offsets, width = _positions(len(models), len(pairs))
    panels = [(col, title) for col, title in (("peak_rss_mb", "peak resident memory of the case process, MB"),
                                              ("artifact_mb", "artifact size on disk, MB")) if frame[col].notna().any()]
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=[t for _, t in panels])
    shown = set()
    for (b, p), off in zip(pairs, offsets, strict=True):
        sub = frame[(frame["backend"] == b) & (frame["precision"] == p)]
        for row, (col, _) in enumerate(panels, 1):
            s = sub[sub[col].notna()]
            if s.empty:
                continue
            fig.add_trace(go.Bar(
                x=[models.index(m) + off for m in s["model"]], y=s[col], width=width * 0.92, name=combo_label(b, p),
                legendgroup=f"{b}|{p}", showlegend=(b, p) not in shown, marker={"color": combo_color(b, p)},
                hovertext=[f"<b>{pesc(r.model)}</b>  {combo_label(b, p)}<br>{fmt(getattr(r, col))} MB"
                           for r in s.itertuples()], hovertemplate="%{hovertext}<extra></extra>"), row=row, col=1)
            shown.add((b, p))
    _layout(fig, "Memory and artifact size", 120 + 250 * len(panels), barmode="overlay",
            legend={"title": {"text": "backend precision"}})
    for axis in ("xaxis", "xaxis2")[:len(panels)]:
        fig.layout[axis].update(tickvals=list(range(len(models))), ticktext=[pesc(m) for m in models],
                                range=[-0.6, len(models) - 0.4], showgrid=False)
    fig.update_yaxes(title_text="MB")
    return fig


def status_colorscale(statuses: Sequence[str]) -> list[list[Any]]:
    """A discrete plotly colorscale giving status i (of ``statuses``) its status colour."""
    n = max(len(statuses), 1)
    scale: list[list[Any]] = []
    for i, status in enumerate(statuses):
        colour = STATUS_COLORS.get(status, "#999999")
        scale += [[i / n, colour], [(i + 1) / n, colour]]
    return scale
