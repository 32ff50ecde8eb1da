"""The ``harness`` command: backends, models, run, report, compare, trend."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from harness import backends
from harness.core.errors import HarnessError
from harness.core.options import CaseRequest, MeasureOptions
from harness.core.record import Record
from harness.core.types import Precision, Status
from harness.exec.supervisor import run_in_subprocess


def _cmd_backends(args: argparse.Namespace) -> int:
    from harness import backends

    rows = []
    for name in backends.names(include_hidden=args.all):
        b = backends.get(name)()
        reason = b.unavailable_reason()
        rows.append((name, ",".join(b.aliases) or "-", ",".join(sorted(p.value for p in b.precisions)),
                     b.version() if reason is None else "-", "yes" if reason is None else f"no: {reason}"))
    _print_table(("backend", "aliases", "precisions", "version", "available"), rows)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from model_zoo import list_models, load_zoo_file

    for f in args.zoo_file:
        load_zoo_file(f)
    names = list_models(args.pattern or ["*"], args.tag)
    try:
        from model_zoo.listing import describe, format_table
    except ImportError:
        from model_zoo import get_model

        _print_table(("model", "tags", "inputs"), [
            (n, ",".join(sorted(get_model(n).tags)), "; ".join(f"{t.name}{list(t.shape)}:{t.dtype}"
                                                              for t in get_model(n).inputs)) for n in names])
        return 0
    rows = describe(names)
    print(json.dumps(rows, indent=2, default=str) if args.json else format_table(rows))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from harness.cli import run_one_cli

    return run_one_cli(args.model, args.backend, args.precision, json_out=args.json, in_process=args.in_process,
                       measure=not args.no_measure, timeout_s=args.timeout, zoo_files=tuple(args.zoo_file),
                       threads=args.threads)


def _cmd_report(args: argparse.Namespace) -> int:
    from harness.report import build_report

    print(build_report(args.results, args.output))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from harness.report import compare_runs

    outcome = compare_runs(args.baseline, args.current, args.fail_on or ("p50:10%",), args.output)
    print(outcome.text)
    return outcome.exit_code


def _cmd_trend(args: argparse.Namespace) -> int:
    from harness.report import trend_report

    print(trend_report(args.results, args.output))
    return 0


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)).rstrip())


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``harness`` command."""
    p = argparse.ArgumentParser(prog="harness", description="Cross-backend inference conformance and benchmarks. "
                                "Suites run with pytest: pytest suites/ --backend ort --precision int8")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("backends", help="list backends, their precisions and whether they can run here")
    s.add_argument("--all", action="store_true", help="include hidden test-only backends")
    s.set_defaults(func=_cmd_backends)

    s = sub.add_parser("models", help="list zoo models with tags, inputs, parameters and FLOPs")
    s.add_argument("pattern", nargs="*", help="shell wildcards (default: all)")
    s.add_argument("--tag", action="append", default=[], help="only models with this tag (repeatable)")
    s.add_argument("--zoo-file", action="append", default=[], help="a Python file registering more models")
    s.add_argument("--json", action="store_true", help="JSON output")
    s.set_defaults(func=_cmd_models)

    s = sub.add_parser("run", help="run one case outside pytest and print its record")
    s.add_argument("model")
    s.add_argument("--backend", required=True, help=backends.describe_names())
    s.add_argument("--precision", default="fp32", help="fp32, fp16 or int8 (default fp32)")
    s.add_argument("--json", action="store_true", help="print the full record as JSON")
    s.add_argument("--in-process", action="store_true", help="no child process (debugging)")
    s.add_argument("--no-measure", action="store_true", help="conformance only, no latency/throughput")
    s.add_argument("--timeout", type=float, default=600.0, help="case time limit in seconds (default 600)")
    s.add_argument("--threads", type=int, default=None, help="engine threads (default: usable CPUs)")
    s.add_argument("--zoo-file", action="append", default=[], help="a Python file registering more models")
    s.set_defaults(func=_cmd_run)

    s = sub.add_parser("report", help="write the HTML dashboard for one or more runs")
    s.add_argument("results", nargs="+", help="run directories or results directories holding runs")
    s.add_argument("-o", "--output", default="report.html", help="output HTML file (default report.html)")
    s.set_defaults(func=_cmd_report)

    s = sub.add_parser("compare", help="compare two runs; exit 1 on a regression beyond the thresholds")
    s.add_argument("baseline")
    s.add_argument("current")
    s.add_argument("--fail-on", action="append", default=[], metavar="METRIC:THRESHOLD",
                   help="e.g. p50:10%%, p99:20%%, cosine:0.001, peak_rss_mb:15%% (repeatable; default p50:10%%)")
    s.add_argument("-o", "--output", default=None, help="also write an HTML comparison view")
    s.set_defaults(func=_cmd_compare)

    s = sub.add_parser("trend", help="p50 per case over many runs of the same machine")
    s.add_argument("results", nargs="+")
    s.add_argument("-o", "--output", default="trend.html")
    s.set_defaults(func=_cmd_trend)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``harness`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (HarnessError, ValueError, FileNotFoundError) as exc:
        print(f"harness {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())






def run_one_cli(model: str, backend: str, precision: str, *, json_out: bool = False, in_process: bool = False,
                measure: bool = True, timeout_s: float = 600.0, threads: int | None = None,
                zoo_files: Sequence[str] = (), bench: bool = False, batches: Sequence[int] | None = None,
                out: IO[str] | None = None) -> int:
    """``harness run``: one case, printed as JSON or a summary; exit 0 for pass/fallback/xfail, else 1."""
    out = out or sys.stdout
    opts: MeasureOptions | None = None
    if measure:
        opts = (MeasureOptions.bench if bench else MeasureOptions.quick)(
            batches=tuple(int(b) for b in batches) if batches else None)
    req = CaseRequest(model, backend, Precision.parse(precision), suite="cli", threads=threads,
                      zoo_files=tuple(str(Path(f).resolve()) for f in zoo_files), measure=opts)
    if in_process:
        from harness.run.case import run_case

        record = run_case(req)
    else:
        record = run_in_subprocess(req, timeout_s=timeout_s)
    out.write((json.dumps(json.loads(record.to_json()), indent=2) if json_out else format_record(record)) + "\n")
    ok = {Status.PASS.value, Status.FALLBACK.value, Status.XFAIL.value}
    return 0 if record.status in ok else 1


def format_record(r: Record) -> str:
    """A few human-readable lines about one record (cosine with enough digits to tell 0.99997 from 1)."""

    def metric(key: str, v: object) -> str:
        if key == "cosine" and isinstance(v, int | float) and not isinstance(v, bool):
            text = f"{float(v):.10f}".rstrip("0")  # every significant digit up to 1e-10: 0.99997, never "1"
            return f"{key}={text}0" if text.endswith(".") else f"{key}={text}"
        return f"{key}={v:.3g}" if isinstance(v, int | float) and not isinstance(v, bool) else f"{key}={v}"

    lines = [f"{r.case_id}: {r.status}" + (f" ({r.reason})" if r.reason else "")]
    if r.executed_precision:
        lines.append(f"  executed: {r.executed_precision} ({r.precision_match})   engine: {r.backend} "
                     f"{r.backend_version}   threads: {r.settings.get('threads', '?')}")
    if r.metrics:
        lines.append("  error: " + ", ".join(metric(k, v) for k, v in r.metrics.items()))
    if r.artifact:
        lines.append(f"  artifact: {r.artifact} ({r.artifact_mb} MB)")
    if r.latency:
        lat = r.latency
        flag = "  UNSTABLE" if lat.get("unstable") else ""
        engine = f"  engine's own p50 {lat['engine_p50_ms']:.3f}" if lat.get("engine_p50_ms") is not None else ""
        lines.append(f"  latency: p50 {lat['p50_ms']:.3f} ms  p90 {lat['p90_ms']:.3f}  p99 {lat['p99_ms']:.3f}  "
                     f"mean {lat['mean_ms']:.3f}  cv {lat['cv']:.3f}  n={lat['n']}  batch={lat.get('batch')}{flag}")
        if lat.get("trials_p50_ms"):
            lines.append("  trials p50: " + ", ".join(f"{v:.3f}" for v in lat["trials_p50_ms"])
                         + f" ms{engine}   load {lat.get('load_1m')}")
    elif "measure_error" in r.extra:
        lines.append(f"  latency: not measured: {r.extra['measure_error']}")
    for t in r.throughput:
        lines.append(f"  throughput: batch {t['batch']}: {t['items_per_s']:.1f} items/s ({t['mode']})")
    if (roof := r.extra.get("roofline")) and "error" in roof:
        lines.append(f"  roofline: {roof['error']}")
    elif roof:
        lines.append(f"  roofline: {roof.get('gflops', 0):.4g} GFLOP/inference, {roof.get('achieved_gflop_s', 0):.1f}"
                     f" GFLOP/s, {roof.get('fraction_of_peak', float('nan')):.1%} of the "
                     f"{roof.get('peak_precision', 'fp32')} peak {roof.get('peak_gflop_s')}")
    if r.peak_rss_mb is not None and r.executed_precision:
        lines.append(f"  peak RSS of the case: {r.peak_rss_mb} MB")
    if r.timings_s:
        lines.append("  seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in r.timings_s.items()))
    return "\n".join(lines)
