"""Can this machine gate latency? N identical perf runs compared pairwise, and a planted slowdown in each.

    python scripts/perf_repeatability.py --out DIR [--repeats 5] [--slowdown 0.2] [-- PYTEST ARGS]

Runs ``pytest suites/test_perf.py -m perf`` ``repeats + 1`` times (default selection:
``--model resnet18``), then for each consecutive pair (run i, run i+1):

* ``harness compare`` run i vs run i+1 must exit 0 (identical code: no regression);
* run i vs a copy of run i+1 in which one passing case (``--plant CASE``, default the first
  stable passing one) is made ``slowdown`` slower (every latency figure of that record scaled: samples,
  percentiles, trial medians, throughput) must exit 1 with exactly that case flagged.

The copy is a planted change of a real run: real trial-to-trial and run-to-run noise, a known
slowdown. Prints one line per comparison and a summary; exits 0 when all comparisons came out right.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCALED = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms", "min_ms", "engine_p50_ms")


def perf_run(out: Path, run_id: str, pytest_args: list[str]) -> float:
    """One perf suite run into ``out/run_id``; returns its wall time in seconds."""
    cmd = [sys.executable, "-m", "pytest", "suites/test_perf.py", "-m", "perf", "-p", "no:cacheprovider", "-q",
           "--results-dir", str(out), "--run-id", run_id, "--no-report", *pytest_args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    (out / f"{run_id}.log").write_text(proc.stdout + proc.stderr)
    if not (out / run_id / "records.jsonl").exists():
        sys.exit(f"{run_id}: no records written (exit {proc.returncode}); see {out / f'{run_id}.log'}")
    return time.perf_counter() - t0


def slowed(lat: dict[str, Any], factor: float) -> dict[str, Any]:
    """A latency dict ``factor`` times slower in every figure."""
    out = {k: (v * factor if k in SCALED and isinstance(v, int | float) else v) for k, v in lat.items()}
    for key in ("samples_ms", "trials_p50_ms"):
        if key in lat:
            out[key] = [v * factor for v in lat[key]]
    return out


def plant(base: Path, src: Path, dst: Path, case: str | None, factor: float) -> str:
    """Copy run ``src`` to ``dst`` with one passing case ``factor`` times slower; return its label ("" when
    there is none). Default case: the first passing one stable in both ``base`` and ``src`` (an unstable cell
    is never gated)."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    lines = (dst / "records.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    label = lambda r: f"{r['model']} {r['backend']} {r['precision']}"  # noqa: E731
    unstable = {label(r) for r in map(json.loads, (base / "records.jsonl").read_text().splitlines())
                if (r.get("latency") or {}).get("unstable")}
    candidates = [r for r in records if r["status"] == "pass" and r.get("latency")
                  and (label(r) == case if case else not r["latency"].get("unstable") and label(r) not in unstable)]
    if not candidates:
        return ""  # every passing case is unstable on one side or the other: nothing could be gated
    target = candidates[0]
    target["latency"] = slowed(target["latency"], factor)
    for entry in target.get("throughput") or []:
        entry.update(slowed(entry, factor))
        if entry.get("items_per_s"):
            entry["items_per_s"] /= factor
    (dst / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return label(target)


def compare(base: Path, cur: Path) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "compare", str(base), str(cur)], cwd=ROOT,
                          capture_output=True, text=True)
    return proc.returncode, proc.stdout


def main(argv: list[str]) -> int:
    if "--" in argv:
        i = argv.index("--")
        argv, pytest_args = argv[:i], argv[i + 1:]
    else:
        pytest_args = ["--model", "resnet18"]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--slowdown", type=float, default=0.2)
    p.add_argument("--plant", help="case to slow down, 'model backend precision' (default: first stable pass)")
    p.add_argument("--reuse", action="store_true", help="compare runs already in --out instead of running")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [f"r{i}" for i in range(args.repeats + 1)]
    for run in runs:
        if not (args.reuse and (args.out / run / "records.jsonl").exists()):
            wall = perf_run(args.out, run, pytest_args)
            print(f"{run}: {wall:.0f} s, load {os.getloadavg()[0]:.2f}", flush=True)
    clean = caught = n_unjudged = 0
    for a, b in itertools.pairwise(runs):
        code, text = compare(args.out / a, args.out / b)
        (args.out / f"compare-{a}-{b}.txt").write_text(text)
        ok = code == 0
        clean += ok
        flagged = [line for line in text.splitlines() if line.startswith("REGRESSION")]
        print(f"{a} vs {b}: exit {code} {'clean' if ok else 'FLAGGED: ' + '; '.join(flagged)}")
        planted = args.out / f"{b}-planted"
        label = plant(args.out / a, args.out / b, planted, args.plant, 1 + args.slowdown)
        if not label:
            print(f"{a} vs {b}+{args.slowdown:.0%}: no case is stable in both runs; nothing can be gated (not judged)")
            n_unjudged += 1
            continue
        code, text = compare(args.out / a, planted)
        (args.out / f"compare-{a}-{b}-planted.txt").write_text(text)
        flagged = [line for line in text.splitlines() if line.startswith("REGRESSION")]
        hit = code == 1 and len(flagged) == 1 and label in flagged[0]
        caught += hit
        print(f"{a} vs {b}+{args.slowdown:.0%} on {label}: exit {code} {'caught' if hit else 'MISSED'} "
              f"{'; '.join(flagged)}")
    n = len(runs) - 1
    judged = n - n_unjudged
    print(f"identical runs clean {clean}/{n}; planted {args.slowdown:.0%} slowdown caught {caught}/{judged}"
          + (f" ({n_unjudged} pairs had no case stable in both runs)" if n_unjudged else ""))
    return 0 if clean == n and caught == judged == n else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
