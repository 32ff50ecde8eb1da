"""The run report: one self-contained HTML page with a section per machine."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from harness.core.types import STATUS_ORDER
from harness.report import figures, ops
from harness.report.load import Runs, latest, load_runs, sort_cases
from harness.report.page import Column, figure, machine_selector, note, page, section, table, write_atomic
from harness.report.text import esc, fmt
from harness.report.thresholds import trial_spread

VIEWS = [("fastest", "Fastest"), ("run", "Run"), ("conformance", "Conformance"), ("failures", "Failures"),
         ("latency", "Latency"), ("speedup", "Speed-up"), ("tradeoff", "Trade-off"), ("memory", "Memory"),
         ("time", "Time"), ("operators", "Operators")]
CAUSE_ORDER = {"harness": (0, "ours: a harness bug, conversion recipe or API limit to fix"),
               "engine": (1, "the engine's own error, crash or wrong numbers"),
               "model": (2, "the model as written (untraceable, nondeterministic, frozen by tracing)"),
               "environment": (3, "what this machine lacks (package, tool, GPU)"),
               "": (4, "no cause recorded (records older than schema 2)")}
PHASE_COLOURS = {"process_start": "#9aa3b2", "reference": "#c2410c", "export": "#a16207", "build": "#6d28d9",
                 "compare": "#1d4ed8", "accuracy": "#0e7490", "measure": "#047857", "other": "#d1d5db"}


def when(ts: float) -> str:
    """A UTC timestamp for people ("" when unknown)."""
    if not ts or math.isnan(ts):
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def cosine_cell(value: Any) -> str:
    """Cosine with enough digits to see 0.9999 vs 0.99999."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = f"{float(value):.10f}".rstrip("0")
    return esc(text + "0" * max(0, 8 - len(text)))


def _badges(frame: pd.DataFrame) -> str:
    counts = frame["status"].value_counts()
    order = [s for s in STATUS_ORDER if s in counts] + sorted(set(counts.index) - set(STATUS_ORDER))
    return "".join(f'<span class="st st-{esc(s)}">{esc(s)} {int(counts[s])}</span>' for s in order)


def _kv(pairs: Sequence[tuple[str, Any]]) -> str:
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(fmt(v) if not isinstance(v, str) else v)}</dd>"
                    for k, v in pairs if v not in (None, "", [], {}))
    return f'<dl class="kv">{items}</dl>'


def header(runs: Runs, machine: str, frame: pd.DataFrame, prefix: str) -> str:
    """Machine fingerprint, engine versions, runs, counts by status and unstable measurements."""
    fp = runs.fingerprint(machine)
    machine_kv = _kv([("machine id", machine), ("host", fp.get("hostname")), ("CPU", fp.get("cpu")),
                      ("cores", fp.get("cores")), ("RAM, GB", fp.get("ram_gb")), ("OS", fp.get("os")),
                      ("Python", fp.get("python")), ("project commit", fp.get("git_commit")),
                      ("CPU features", " ".join(map(str, fp.get("cpu_flags") or [])))])
    versions = dict(fp.get("versions") or {})
    reported = frame[frame["backend_version"] != ""].drop_duplicates(["backend", "backend_version"])
    engine_kv = _kv([(f"{k} (package)", str(v)) for k, v in sorted(versions.items())]
                    + [(f"{r.backend} (engine reports)", r.backend_version) for r in reported.itertuples()])
    my_runs = sorted((r for r in runs.runs.values() if r.machine_id == machine), key=lambda r: r.started_at)
    run_rows = []
    for r in my_runs:
        recs = frame[frame["run_id"] == r.run_id]
        run_rows.append({"run": r.run_id, "started": when(r.started_at), "minutes": (r.finished_at - r.started_at) / 60
                         if r.finished_at and r.started_at else math.nan, "records": len(recs),
                         "suites": ", ".join(sorted(recs["suite"].unique())), "statuses": _badges(recs)})
    run_cols = [Column("run", "run id"), Column("started", "started"), Column("minutes", "minutes", numeric=True),
                Column("records", "records", numeric=True), Column("suites", "suites"),
                Column("statuses", "statuses", render=lambda v: v)]
    current = latest(frame)
    unstable = latest(frame, with_latency=True)
    unstable = unstable[unstable["unstable"]]
    unstable_cols = [Column("model", "model"), Column("backend", "backend"), Column("precision", "precision"),
                     Column("p50_ms", "p50 ms", numeric=True), Column("cv", "CV", numeric=True),
                     Column("n", "samples", numeric=True), Column("run_id", "run")]
    body = (f'<div class="grid"><div><h3>Machine</h3>{machine_kv}</div><div><h3>Engine versions</h3>{engine_kv}'
            f'</div></div><h3>Latest verdict per case ({len(current)} cases)</h3><div class="badges">'
            f"{_badges(current)}</div><h3>Runs</h3>"
            + table(run_cols, run_rows, f"{prefix}-runs")
            + "<h3>Unstable measurements</h3>"
            + note("Latency whose variation between repeats is too high to publish as a fact; re-run on a quiet "
                   "machine. They are hatched in the latency chart.")
            + table(unstable_cols, unstable.to_dict("records"), f"{prefix}-unstable",
                    empty="none: every latency measurement was stable"))
    return section(f"run-{prefix}", "Run", "", body)


CASE_COLUMNS = [
    Column("model", "model"), Column("backend", "backend"), Column("precision", "precision"), Column("suite", "suite"),
    Column("status", "status", status=True), Column("executed_precision", "executed"),
    Column("precision_match", "match"), Column("cosine", "cosine", numeric=True, render=cosine_cell),
    Column("max_abs", "max abs", numeric=True), Column("max_rel", "max rel", numeric=True),
    Column("mismatch_fraction", "out of tol", numeric=True), Column("p50_ms", "p50 ms", numeric=True),
    Column("p99_ms", "p99 ms", numeric=True), Column("peak_rss_mb", "peak MB", numeric=True),
    Column("artifact_mb", "artifact MB", numeric=True), Column("reason", "reason / known failure", wide=True),
    Column("run_id", "run"),
]


def conformance(frame: pd.DataFrame, prefix: str) -> str:
    """The status matrix and the table of every case."""
    cases = latest(frame[frame["suite"] != ops.SUITE])
    if cases.empty:
        return section(f"conformance-{prefix}", "Conformance", "", note("no model cases in these runs"))
    rows = []
    for r in cases.to_dict("records"):
        reason = r["reason"]
        if r["known_reason"] and r["known_reason"] not in reason:
            reason = f"known failure: {r['known_reason']} {r['known_link']}".strip() + (f"; {reason}" if reason else "")
        rows.append({**r, "reason": reason})
    body = (figure(figures.conformance_matrix(cases), f"{prefix}-matrix")
            + "<h3>All cases</h3>" + table(CASE_COLUMNS, rows, f"{prefix}-cases"))
    intro = ("Newest verdict of each case. Fallback (amber) = outputs match but the engine did not compute at the "
             "requested precision; xfail/xpass (blue/cyan) = known failures, with the entry's reason. Hover a cell "
             "for cosine, max abs error, executed precision and the reason.")
    return section(f"conformance-{prefix}", "Conformance matrix", intro, body)


PERF_COLUMNS = [
    Column("model", "model"), Column("backend", "backend"), Column("precision", "precision"),
    Column("status", "status", status=True), Column("suite", "measured in"),
    Column("p50_ms", "p50 ms", numeric=True), Column("p90_ms", "p90 ms", numeric=True),
    Column("p99_ms", "p99 ms", numeric=True), Column("cv", "CV", numeric=True), Column("n", "n", numeric=True),
    Column("threads", "threads", numeric=True), Column("batch", "batch", numeric=True),
    Column("unstable", "unstable"), Column("speedup_vs_torch", "x vs torch fp32", numeric=True),
    Column("speedup_vs_own_fp32", "x vs own fp32", numeric=True),
    Column("best_items_per_s", "best items/s", numeric=True), Column("peak_rss_mb", "peak MB", numeric=True),
]


def performance(frame: pd.DataFrame, prefix: str) -> str:
    """Latency, speed-up, trade-off and memory sections (with a note where data is missing)."""
    models = frame[frame["suite"] != ops.SUITE]
    perf = figures.perf_cases(models)
    parts = []
    if perf.empty:
        msg = ("no performance data: these runs are conformance-only (no latency was measured). Run the "
               "performance suite to fill the latency, speed-up and trade-off views.")
        for anchor, title in (("latency", "Latency"), ("speedup", "Speed-up"), ("tradeoff", "Trade-off")):
            parts.append(section(f"{anchor}-{prefix}", title, "", note(msg)))
    else:
        sp = figures.speedups(perf)
        parts.append(section(f"latency-{prefix}", "Latency", "Per case: the perf suite's isolated measurement where "
                             "there is one, else the quick latency the conformance suite took after the verdict "
                             "(3 interleaved trials in the shared process). Hover for every percentile, CV, sample "
                             "count, threads and batch. Cross-hatched: fallback (not the requested precision).",
                             figure(figures.latency(perf), f"{prefix}-latency")
                             + table(PERF_COLUMNS, sp.to_dict("records"), f"{prefix}-perf")))
        missing = sorted(set(perf["model"]) - set(perf.loc[(perf["backend"] == "torch")
                                                           & (perf["precision"] == "fp32"), "model"]))
        gap = note("no PyTorch FP32 latency for: " + ", ".join(missing)) if missing else ""
        parts.append(section(f"speedup-{prefix}", "Speed-up", "Ratio of p50 latencies measured on this machine.",
                             gap + figure(figures.speedup(perf), f"{prefix}-speedup")))
        if sp["speedup_vs_torch"].notna().any():
            fig, axis = figures.tradeoff(perf)
            body = figure(fig, f"{prefix}-tradeoff")
            intro = f"Up and right is fast but inaccurate; down and right is what you want. Error axis: {axis}."
        else:
            body, intro = note("no PyTorch FP32 latency to compute speed-ups from"), ""
        parts.append(section(f"tradeoff-{prefix}", "Accuracy / speed / memory trade-off", intro, body))
    mem = figures.memory_cases(models)
    if mem["peak_rss_mb"].notna().any() or mem["artifact_mb"].notna().any():
        body = figure(figures.memory(mem), f"{prefix}-memory")
    else:
        body = note("no memory or artifact size data in these runs")
    parts.append(section(f"memory-{prefix}", "Peak memory and artifact size", "Peak memory is measured from "
                         "outside the engine (the case's process); artifact size includes companion weight files.",
                         body))
    return "".join(parts)


FASTEST_COLUMNS = [
    Column("model", "model"), Column("best", "fastest passing engine"), Column("executed", "executed"),
    Column("p50_ms", "p50 ms", numeric=True), Column("speedup_vs_torch", "x vs torch fp32", numeric=True),
    Column("cosine", "cosine vs torch fp32", numeric=True, render=cosine_cell),
    Column("max_abs", "max abs", numeric=True), Column("artifact_mb", "artifact MB", numeric=True),
    Column("peak_rss_mb", "peak MB", numeric=True), Column("cv", "CV", numeric=True),
    Column("passing", "passing cells timed", numeric=True), Column("note", "note", wide=True),
]


def fastest(frame: pd.DataFrame, prefix: str) -> str:
    """The first screen: per model, the fastest (backend, precision) that passed, and whether it is accurate."""
    perf = figures.perf_cases(frame[frame["suite"] != ops.SUITE])
    intro = ("Per model, the fastest engine and precision whose outputs matched PyTorch FP32 within the model's "
             "tolerance at the requested precision (status pass) on this machine: median latency, speed-up over "
             "PyTorch FP32, cosine against PyTorch FP32, size on disk and peak memory. Fallbacks (the requested "
             "precision did not execute) are never chosen; a faster one is named in the note.")
    if perf.empty:
        return section(f"fastest-{prefix}", "Fastest accurate engine per model", intro,
                       note("no latency in these runs (verdicts only, e.g. --no-measure): nothing to rank"))
    busy = perf[perf["load_1m"] > perf["cpus"]]
    if len(busy):
        intro += (f" {len(busy)} of {len(perf)} latencies were measured on a busy machine (1-minute load up to "
                  f"{busy['load_1m'].max():.1f} on {busy['cpus'].max():g} CPUs): they carry other work's interference; "
                  "compare engines within this run, not across machines.")
    has_torch = bool(((perf["backend"] == "torch") & (perf["precision"] == "fp32")).any())
    if not has_torch:
        intro += " No PyTorch FP32 latency in these runs (run with --backend torch): no speed-up column."
    rows = []
    for r in figures.best_per_model(perf):
        notes = [r.get("runner_up", ""), r.get("fallback_note", "")]
        if "best" not in r:
            notes.insert(0, "no passing case was timed")
        if r.get("unstable"):
            notes.append(f"unstable (trial medians {trial_spread(r)})")
        if "best" in r and has_torch and math.isnan(r.get("speedup_vs_torch", math.nan)):
            notes.append("no PyTorch FP32 latency for this model")
        rows.append({**r, "note": "; ".join(n for n in notes if n)})
    return section(f"fastest-{prefix}", "Fastest accurate engine per model", intro,
                   table(FASTEST_COLUMNS, rows, f"{prefix}-fastest"))


RECORD_FIELDS = {"cause": "", "load_1m": math.nan, "cpus": math.nan}
"""Record fields the views need beyond ``load.record_row``'s columns (read from the records if absent)."""


def with_record_fields(runs: Runs, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ``cause``, ``load_1m`` and ``cpus`` columns, read from the records when it lacks them."""
    missing = [k for k in RECORD_FIELDS if k not in frame.columns]
    if not missing:
        return frame
    from harness.results import read_records

    def num(value: Any) -> float:
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan

    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    for info in runs.runs.values():
        for rec in read_records(info.path):
            lat = rec.latency or {}
            found[(rec.run_id or info.run_id, rec.test_id or rec.case_id, rec.suite)] = {
                "cause": rec.cause or "", "load_1m": num(lat.get("load_1m")), "cpus": num(lat.get("cpus"))}
    keys = list(zip(frame["run_id"], frame["test_id"], frame["suite"], strict=True))
    return frame.assign(**{k: [found.get(key, RECORD_FIELDS).get(k, RECORD_FIELDS[k]) for key in keys]
                           for k in missing})


FAILURE_COLUMNS = [
    Column("status", "status", status=True), Column("model", "model"), Column("backend", "backend"),
    Column("precision", "precision"), Column("suite", "suite"), Column("reason", "reason", wide=True),
    Column("run_id", "run"),
]


def failures(frame: pd.DataFrame, prefix: str) -> str:
    """One row per model case that did not pass, grouped by whom it is charged to, the reason in full."""
    cases = latest(frame[frame["suite"] != ops.SUITE])
    bad = cases[~cases["status"].isin(figures.TRUE_PASS)]
    intro = ("Every model case whose newest verdict is not a pass, with the engine's or the harness's reason in "
             "full, grouped by cause. The matrix above shows the same cells (hover for the evidence).")
    if bad.empty:
        return section(f"failures-{prefix}", "Failures by cause", intro, note("none: every case passed"))
    parts = []
    groups = sorted(bad.groupby(bad["cause"].fillna("")), key=lambda kv: CAUSE_ORDER.get(kv[0], (9, ""))[0])
    for cause, rows in groups:
        meaning = CAUSE_ORDER.get(cause, (9, "other"))[1]
        records = []
        for r in sort_cases(rows).to_dict("records"):
            reason = r["reason"]
            if r["known_reason"] and r["known_reason"] not in reason:
                reason = f"known failure: {r['known_reason']}" + (f"; {reason}" if reason else "")
            records.append({**r, "reason": reason})
        parts.append(f"<h3>{esc(cause or 'unrecorded')} ({len(rows)}): {esc(meaning)}</h3>"
                     + _badges(rows) + table(FAILURE_COLUMNS, records, f"{prefix}-fail-{cause or 'none'}"))
    return section(f"failures-{prefix}", "Failures by cause", intro, "".join(parts))


def _share_bar(row: dict[str, Any]) -> str:
    total = row.get("total_s") or 0.0
    if total <= 0:
        return ""
    cells = "".join(f'<span title="{esc(k)} {row[k]:.1f} s" style="display:inline-block;height:11px;'
                    f'width:{100 * row[k] / total:.2f}%;background:{c}"></span>'
                    for k, c in PHASE_COLOURS.items() if row.get(k))
    return f'<span style="display:inline-block;width:260px;background:#eef1f6">{cells}</span>'


def time_view(runs: Runs, machine: str, prefix: str) -> str:
    """Where the time of the newest run went: seconds per phase by backend and by suite (``run.json``)."""
    mine = sorted((r for r in runs.runs.values() if r.machine_id == machine and r.info.get("phases_s")),
                  key=lambda r: r.started_at)
    title = "Where the time went"
    if not mine:
        return section(f"time-{prefix}", title, "", note("no phase timings in these runs' run.json (written at "
                                                          "the end of a pytest session by this harness version)"))
    run = mine[-1]
    phases = run.info["phases_s"]
    cols = ([Column("group", "group"), Column("cases", "cases", numeric=True),
             Column("total_s", "seconds", numeric=True), Column("bar", "share", render=lambda v: v)]
            + [Column(k, k.replace("_", " ") + " s", numeric=True) for k in PHASE_COLOURS])
    legend = " ".join(f'<span class="pill"><span style="display:inline-block;width:10px;height:10px;'
                      f'background:{c}"></span> {esc(k.replace("_", " "))}</span>' for k, c in PHASE_COLOURS.items())
    total = figures.phase_rows({"all": {"all": phases.get("total", {})}}, "all")
    wall = run.finished_at - run.started_at if run.finished_at and run.started_at else math.nan
    body = [f'<div class="badges">{legend}</div>', note(
        f"Run {run.run_id}: {fmt(wall)} s from start to end of the session; case seconds below are summed over "
        "cases (process start = spawning and importing a case's process; other = model and engine set-up).")]
    for key, label in (("by_backend", "By backend"), ("by_suite", "By suite")):
        rows = [{**r, "bar": _share_bar(r)} for r in figures.phase_rows(phases, key) + total]
        body.append(f"<h3>{label}</h3>" + table(cols, rows, f"{prefix}-time-{key}"))
    return section(f"time-{prefix}", title, "Seconds per phase of every case: process start, PyTorch reference, "
                   "ONNX export, engine build (convert/quantize/compile), comparison, task metric, measurement.",
                   "".join(body))


def machine_block(runs: Runs, machine: str, index: int) -> str:
    """Every view of one machine's records."""
    frame = runs.for_machine(machine)
    prefix = f"m{index}"
    frame = with_record_fields(runs, frame)
    parts = [f'<div class="machine" data-machine="{esc(machine)}" data-index="{index}">',
             f'<div class="machine-title">Machine {esc(machine)}</div>', fastest(frame, prefix),
             header(runs, machine, frame, prefix), conformance(frame, prefix), failures(frame, prefix),
             performance(frame, prefix), time_view(runs, machine, prefix)]
    board = ops.scoreboard(frame, prefix)
    if board:
        parts.append(section(f"operators-{prefix}", "Operator scoreboard (ONNX conformance)",
                             "Pass rate of each engine on the ONNX backend tests, by operator type and opset; a "
                             "test with several op types counts for each.", board))
    parts.append("</div>")
    return "".join(parts)


NAV_JS = """<script>
document.addEventListener("click", function(e){
  var a = e.target.closest && e.target.closest("header.top nav a"); if(!a) return;
  var view = a.getAttribute("href").slice(1), box = null;
  document.querySelectorAll(".machine").forEach(function(m){ if(m.style.display !== "none" && !box) box = m; });
  var target = box && document.getElementById(view + "-m" + box.getAttribute("data-index"));
  if(target){ e.preventDefault(); window.scrollTo({top: target.getBoundingClientRect().top + window.scrollY - 70}); }
});
</script>"""


def render(runs: Runs, title: str = "Inference harness report") -> str:
    """The report page for loaded runs."""
    machines = runs.machines()
    frame = runs.frame
    subtitle = (f"{len(frame)} records from {len(runs.runs)} run(s) on {len(machines)} machine(s); generated "
                f"{when(datetime.now(UTC).timestamp())}")
    if frame.empty:
        body = section("run-m0", "Run", "", note("these runs hold no records yet"))
    else:
        body = "".join(machine_block(runs, m, i) for i, m in enumerate(machines) if len(runs.for_machine(m)))
    has_ops = bool((frame["suite"] == ops.SUITE).any()) if len(frame) else False
    nav = [(a, t) for a, t in VIEWS if a != "operators" or has_ops]
    with_data = [m for m in machines if len(runs.for_machine(m))]
    return page(title, subtitle, body + NAV_JS, nav=nav, selector=machine_selector(with_data))


def build_report(paths: Sequence[str | Path], out: str | Path) -> Path:
    """Write the HTML report of the runs under ``paths`` to ``out`` and return its path."""
    return write_atomic(Path(out), render(load_runs(paths)))
