"""The published site of the nightly runs: an index of nights and machines, each night's report and its
comparison with the night before, the trend, and one shared copy of plotly.js.

Input: a directory of nights, ``<nights>/<night>/<run-id>/records.jsonl`` (each night holds the runs of its
matrix jobs: shards and machines). Output::

    index.html                     nights x machines, verdict counts, comparison outcome, links
    plotly.min.js                  the one copy of plotly.js every page references
    trend.html                     verdicts and p50 of every case over the nights, per machine
    site.json                      the index as data (nights, machines, comparison exit codes)
    nights/<night>/report.html     that night's dashboard
    nights/<night>/compare.html    that night against the previous one (same gates as ``harness compare``)
    nights/<night>/compare.txt
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from harness.core.types import STATUS_ORDER
from harness.report.compare_view import write_compare_html
from harness.report.dashboard import render, when
from harness.report.load import RunInfo, Runs, latest, load_runs
from harness.report.page import Column, OutputPathError, page, plotly_js, section, shared_plotly, table, write_atomic
from harness.report.regress import compare_outcome
from harness.report.text import esc
from harness.report.trend import render_trend
from harness.results import iter_run_dirs

PLOTLY_FILE = "plotly.min.js"
INDEX_FILE = "site.json"
DEFAULT_KEEP = 30


@dataclass(frozen=True)
class Night:
    """One night: its directory, the name shown, the file-system-safe slug of its pages and what it holds."""

    name: str
    path: Path
    slug: str
    started_at: float
    machines: dict[str, dict[str, int]] = field(default_factory=dict)  # machine -> status counts (newest per case)
    cpus: dict[str, str] = field(default_factory=dict)  # machine -> CPU of its fingerprint
    runs: int = 0
    records: int = 0
    compare: dict[str, Any] = field(default_factory=dict)


def slug(name: str) -> str:
    """A directory name safe on every file system and in a URL; a hash suffix keeps distinct names distinct."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")[:80]
    return clean if clean == name and clean else f"{clean or 'night'}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def find_nights(nights_dir: str | Path) -> list[Path]:
    """The night directories under ``nights_dir``: subdirectories holding at least one run directory."""
    root = Path(nights_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory: pass the directory holding one directory per night, "
                                "each holding that night's run directories (<nights>/<night>/<run-id>/records.jsonl)")
    nights = [d for d in sorted(root.iterdir()) if d.is_dir() and any(True for _ in iter_run_dirs([d]))]
    if not nights:
        raise FileNotFoundError(f"no nights under {root}: expected <night>/<run-id>/records.jsonl below it")
    return nights


def _night(path: Path, runs: Runs) -> Night:
    machines: dict[str, dict[str, int]] = {}
    for m in runs.machines():
        frame = runs.for_machine(m)
        if len(frame):
            counts = latest(frame)["status"].value_counts()
            machines[m] = {s: int(counts[s]) for s in [*STATUS_ORDER, *sorted(set(counts.index) - set(STATUS_ORDER))]
                           if s in counts}
    starts = [r.started_at for r in runs.runs.values() if r.started_at and math.isfinite(r.started_at)]
    return Night(name=path.name, path=path, slug=slug(path.name), started_at=min(starts, default=0.0),
                 machines=machines, cpus={m: str(runs.fingerprint(m).get("cpu") or "") for m in machines},
                 runs=len(runs.runs), records=len(runs.frame))


def by_night(loaded: Sequence[tuple[Night, Runs]]) -> Runs:
    """All nights as one Runs whose runs are the nights: the trend then has one column per night, whatever
    number of shards and machines each night had."""
    frames, infos = [], {}
    for night, runs in loaded:
        frames.append(runs.frame.assign(run_id=night.name))
        ends = [r.finished_at for r in runs.runs.values() if math.isfinite(r.finished_at)]
        first = min(runs.runs.values(), key=lambda r: r.started_at)
        infos[night.name] = RunInfo(run_id=night.name, path=night.path, machine_id=first.machine_id,
                                    machine=first.machine, started_at=night.started_at,
                                    finished_at=max(ends, default=night.started_at), records=len(runs.frame), info={})
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return Runs(frame=frame, runs=infos)


def build_site(nights_dir: str | Path, out: str | Path, *, fail_on: Sequence[str] = (),
               keep: int = DEFAULT_KEEP) -> Path:
    """Write the site of the newest ``keep`` nights under ``nights_dir`` into ``out``; return the index path."""
    out = Path(out)
    _check_out(out)
    loaded = []
    for path in find_nights(nights_dir):
        runs = load_runs([path])
        loaded.append((_night(path, runs), runs))
    loaded.sort(key=lambda nr: (nr[0].started_at, nr[0].name))
    loaded = loaded[-keep:] if keep > 0 else loaded
    write_atomic(out / PLOTLY_FILE, plotly_js())
    nights = []
    previous: Night | None = None
    for night, runs in loaded:
        folder = out / "nights" / night.slug
        with shared_plotly(f"../../{PLOTLY_FILE}"):
            write_atomic(folder / "report.html", render(runs, title=f"Night {night.name}"))
            compare = _compare(previous, night, folder, fail_on) if previous else {}
        nights.append(replace(night, compare=compare))
        previous = night
    everything = by_night(loaded)
    with shared_plotly(PLOTLY_FILE):
        write_atomic(out / "trend.html", render_trend(everything, title=f"Trend of {len(nights)} night(s)"))
    _prune(out, {n.slug for n in nights})
    write_atomic(out / INDEX_FILE, json.dumps(_index_data(nights), indent=2, sort_keys=True))
    return write_atomic(out / "index.html", index_page(nights))


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"site output {out} is a file: pass a directory (it is created if missing)")
    if out.is_dir() and any(out.iterdir()) and not (out / INDEX_FILE).exists():
        raise OutputPathError(f"site output {out} is a non-empty directory that holds no {INDEX_FILE} (not a site "
                              "written by `harness site`): pass a new or empty directory so nothing of yours is "
                              "overwritten")


def _prune(out: Path, keep: set[str]) -> None:
    """Remove the pages of nights an earlier build wrote and this one no longer shows."""
    try:
        old = json.loads((out / INDEX_FILE).read_text())
        slugs = {str(n.get("slug")) for n in old.get("nights", []) if isinstance(n, dict)}
    except (OSError, ValueError, AttributeError):
        return
    for name in slugs - keep:
        target = out / "nights" / name
        if name == slug(name) and target.is_dir():  # only directories this module named
            shutil.rmtree(target, ignore_errors=True)


def _compare(previous: Night, night: Night, folder: Path, fail_on: Sequence[str]) -> dict[str, Any]:
    try:
        outcome = compare_outcome(previous.path, night.path, fail_on)
    except (ValueError, FileNotFoundError) as exc:
        write_atomic(folder / "compare.txt", f"not compared with {previous.name}: {exc}\n")
        return {"baseline": previous.name, "exit_code": None, "summary": f"not compared: {exc}"}
    write_atomic(folder / "compare.txt", outcome.text + "\n")
    write_compare_html(folder / "compare.html", outcome.parts(), outcome.exit_code)
    summary = {0: "ok", 1: "regression", 2: "nothing comparable", 3: "missing cases or measurements"}
    return {"baseline": previous.name, "exit_code": outcome.exit_code,
            "summary": summary.get(outcome.exit_code, str(outcome.exit_code)), "regressions": len(outcome.regressions),
            "missing": len(outcome.missing), "unmeasured": len(outcome.unmeasured), "matched": len(outcome.diffs)}


def _index_data(nights: Sequence[Night]) -> dict[str, Any]:
    return {"generated_at": datetime.now(UTC).timestamp(), "plotly": PLOTLY_FILE, "nights": [
        {"name": n.name, "slug": n.slug, "started_at": n.started_at, "runs": n.runs, "records": n.records,
         "machines": n.machines, "report": f"nights/{n.slug}/report.html",
         "compare": {**n.compare, **({"html": f"nights/{n.slug}/compare.html"} if n.compare.get("exit_code")
                                    is not None else {})}} for n in reversed(nights)]}


def _badges(counts: dict[str, int]) -> str:
    return "".join(f'<span class="st st-{esc(s)}">{esc(s)} {n}</span>' for s, n in counts.items())


def _link(href: str, text: str) -> str:
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def _compare_cell(n: Night) -> str:
    c = n.compare
    if not c:
        return "first night: nothing to compare with"
    code = c.get("exit_code")
    cls = "ok" if code == 0 else "alert"
    text = f'<span class="{cls}">{esc(c.get("summary", ""))}</span>'
    if code is None:
        return text
    labels = {"regressions": "regression(s)", "missing": "missing case(s)", "unmeasured": "missing measurement(s)"}
    counts = ", ".join(f"{c[k]} {label}" for k, label in labels.items() if c.get(k))
    return (f"{text} (exit {esc(code)}{'; ' + esc(counts) if counts else ''}) vs {esc(c.get('baseline'))}: "
            f"{_link(f'nights/{n.slug}/compare.html', 'view')} {_link(f'nights/{n.slug}/compare.txt', 'text')}")


NIGHT_COLUMNS = [Column("night", "night", render=lambda v: v), Column("started", "started"),
                 Column("runs", "runs", numeric=True), Column("records", "records", numeric=True),
                 Column("machines", "machines: newest verdict per case", render=lambda v: v, wide=True),
                 Column("compare", "compared with the night before", render=lambda v: v, wide=True)]
MACHINE_COLUMNS = [Column("machine", "machine"), Column("cpu", "CPU"), Column("nights", "nights", numeric=True),
                   Column("last", "last night", render=lambda v: v), Column("latest", "its verdicts that night",
                                                                                render=lambda v: v, wide=True)]


def _machine_link(report: str, machine: str, text: str) -> str:
    return _link(f"{report}?machine={quote(machine, safe='')}", text)


def index_page(nights: Sequence[Night]) -> str:
    """The landing page: one row per night (newest first) and one per machine."""
    rows = []
    for n in reversed(nights):
        report = f"nights/{n.slug}/report.html"
        machines = "<br>".join(f"{_machine_link(report, m, m)} {_badges(c)}" for m, c in n.machines.items())
        rows.append({"night": _link(report, n.name), "started": when(n.started_at), "runs": n.runs,
                     "records": n.records, "machines": machines, "compare": _compare_cell(n)})
    machine_rows = []
    for m in dict.fromkeys(m for n in nights for m in n.machines):
        seen = [n for n in nights if m in n.machines]
        last = seen[-1]
        machine_rows.append({"machine": m, "cpu": last.cpus.get(m, ""), "nights": len(seen),
                             "last": _machine_link(f"nights/{last.slug}/report.html", m, last.name),
                             "latest": _badges(last.machines[m])})
    body = (section("nights", "Nights", "Newest first. Each night's report holds every machine of that night; the "
                    "comparison uses the gates of `harness compare` (exit 1 regression, 2 nothing comparable, 3 "
                    "missing cases or measurements).", table(NIGHT_COLUMNS, rows, "nights", empty="no nights"))
            + section("machines", "Machines", "", table(MACHINE_COLUMNS, machine_rows, "machines",
                                                        empty="no machine wrote records"))
            + section("trend", "Trend", "", f'<p>{_link("trend.html", "Verdicts and p50 latency over the nights")}'
                                            "</p>"))
    now = when(datetime.now(UTC).timestamp())
    subtitle = f"{len(nights)} night(s), {len(machine_rows)} machine(s); generated {now}"
    return page("Inference harness nightly", subtitle, body, figures=False,
                nav=[("nights", "Nights"), ("machines", "Machines"), ("trend", "Trend")])
