"""The ``harness`` command: backends, models, run, report, compare, trend, site.

Exit codes: 0 success, 1 a case failed (``run``) or a regression (``compare``), 2 a usage error (an
option, model, backend or zoo file that is wrong) or nothing comparable, 3 (``compare``) missing cases or
measurements; every error says what exists.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from harness import backends
from harness.core.errors import HarnessError
from harness.core.options import CaseRequest, MeasureOptions
from harness.core.record import Record
from harness.core.types import Precision, Status
from harness.exec.supervisor import run_in_subprocess
from harness.selection import check_selection, check_threads, check_timeout, load_zoo_files


def _cmd_backends(args: argparse.Namespace) -> int:
    from harness import backends

    rows = []
    for name in backends.names(include_hidden=args.all):
        b = backends.get(name)()
        reason = b.unavailable_reason()
        support = b.precision_support()
        why_not: dict[str, list[str]] = {}  # one reason, the precisions it stops
        for p, why in support.items():
            if why is not None:
                why_not.setdefault(why, []).append(p.value)
        rows.append((name, ",".join(b.aliases) or "-", b.version() if reason is None else "-",
                     ",".join(p.value for p, why in support.items() if why is None) or "none",
                     "; ".join(f"{','.join(ps)}: {why}" for why, ps in why_not.items()) or "-"))
    _print_table(("backend", "aliases", "version", "runs here", "cannot run here"), rows)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from model_zoo import list_models
    from model_zoo.listing import describe, format_table

    user = load_zoo_files(args.zoo_file)
    timeout_s = check_timeout(args.timeout, "--timeout")
    check_selection(args.pattern, args.tag, option="pattern", onnx_cases=False)
    names = list_models(args.pattern or ["*"], args.tag)
    # users' forwards run in a child with a time limit: a model that hangs must not hang the listing
    rows = describe(names, isolate=user, zoo_files=[str(Path(f).resolve()) for f in args.zoo_file],
                    timeout_s=timeout_s)
    print(json.dumps(rows, indent=2, default=str) if args.json else format_table(rows))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    return run_one_cli(args.model, args.backend, args.precision, json_out=args.json, in_process=args.in_process,
                       measure=not args.no_measure, timeout_s=args.timeout, zoo_files=tuple(args.zoo_file),
                       threads=args.threads, bench=args.bench)


def _reading(command: str, work: Callable[[], int]) -> int:
    """Run a report command: unreadable lines become one-line warnings; file errors exit 2 with the reason."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        try:
            code = work()
        except OSError as exc:
            print(f"harness {command}: error: {exc}", file=sys.stderr)
            code = 2
        finally:
            for w in caught:
                if issubclass(w.category, RuntimeWarning):
                    print(f"harness {command}: warning: {w.message}", file=sys.stderr)
                else:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return code




def _check_output(path: str | Path, example: str) -> Path:
    """Refuse an output that is a directory before minutes of work; the write itself reports the rest."""
    from harness.report.page import OutputPathError

    out = Path(path)
    if out.is_dir():
        raise OutputPathError(f"output {out} is a directory: pass a file name such as {out / example}")
    return out


def _cmd_report(args: argparse.Namespace) -> int:
    def work() -> int:
        from harness.report.dashboard import render
        from harness.report.load import load_runs
        from harness.report.page import write_atomic

        out = _check_output(args.output, "report.html")
        print(write_atomic(out, render(load_runs(args.results))))
        return 0

    return _reading("report", work)


def _cmd_compare(args: argparse.Namespace) -> int:
    def work() -> int:
        from harness.report import compare_runs

        out = _check_output(args.output, "compare.html") if args.output else None
        outcome = compare_runs(args.baseline, args.current, args.fail_on, out)
        print(outcome.text)
        return outcome.exit_code

    return _reading("compare", work)


def _cmd_trend(args: argparse.Namespace) -> int:
    def work() -> int:
        from harness.report import trend_report

        print(trend_report(args.results, _check_output(args.output, "trend.html")))
        return 0

    return _reading("trend", work)


def _cmd_site(args: argparse.Namespace) -> int:
    def work() -> int:
        from harness.report.site import build_site

        print(build_site(args.nights, args.output, fail_on=args.fail_on, keep=args.keep))
        return 0

    return _reading("site", work)


COMPARE_EPILOG = """\
--fail-on items: METRIC:THRESHOLD (p50:10%, p99:20%, p50:0.5ms, cosine:0.001, peak_rss_mb:25%;
default p50:10% when no metric is given), or a gate: missing (a baseline case has no record in the current run),
unmeasured (a measurement the baseline had is missing or NaN although the case passes, or an explicit
threshold judged no case), status (pass -> skipped, pass -> fallback). Gates are on by default; no-missing,
no-unmeasured, no-status switch one off. A passing case that now fails is always a regression.
Latency: a threshold counts only when the trial medians (latency.trials_p50_ms, k >= 3) are significantly
slower (one-sided Welch t on logs, alpha 0.05); older records fall back to Mann-Whitney over iterations
(alpha 0.01, weak evidence); a cell flagged unstable is never gated.
exit codes: 0 ok; 1 regression; 2 nothing comparable (no machine or case in common) or usage error;
3 no regression but missing cases or measurements."""


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)).rstrip())


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``harness`` command."""
    p = argparse.ArgumentParser(prog="harness", description="Cross-backend inference conformance and benchmarks. "
                                "Suites run with pytest: pytest suites/ --backend ort --precision int8")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("backends", help="list backends and the precisions that can run here (why not, for the others)")
    s.add_argument("--all", action="store_true", help="include hidden test-only backends")
    s.set_defaults(func=_cmd_backends)

    s = sub.add_parser("models", help="list zoo models with tags, inputs, parameters and FLOPs")
    s.add_argument("pattern", nargs="*", help="shell wildcards (default: all)")
    s.add_argument("--tag", action="append", default=[], help="only models with this tag (repeatable)")
    s.add_argument("--zoo-file", action="append", default=[], help="a Python file registering more models")
    s.add_argument("--json", action="store_true", help="JSON output")
    s.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="limit for counting the zoo files' models, in a child process (default 120)")
    s.set_defaults(func=_cmd_models)

    s = sub.add_parser("run", help="run one case outside pytest and print its record")
    s.add_argument("model")
    s.add_argument("--backend", required=True, help=backends.describe_names())
    s.add_argument("--precision", default="fp32", help="fp32, fp16 or int8 (default fp32)")
    s.add_argument("--json", action="store_true", help="print the full record as JSON")
    s.add_argument("--in-process", action="store_true", help="no child process (debugging)")
    s.add_argument("--no-measure", action="store_true", help="conformance only, no latency/throughput")
    s.add_argument("--bench", action="store_true", help="rigorous latency: 5 trials, each alone in a fresh child, "
                                                        "5 s and 50 calls in all (default: a quick latency)")
    s.add_argument("--timeout", type=float, default=600.0, help="case time limit in seconds (default 600)")
    s.add_argument("--threads", type=int, default=None, help="engine threads (default: usable CPUs)")
    s.add_argument("--zoo-file", action="append", default=[], help="a Python file registering more models")
    s.set_defaults(func=_cmd_run)

    s = sub.add_parser("report", help="write the HTML dashboard for one or more runs")
    s.add_argument("results", nargs="+", help="run directories or results directories holding runs")
    s.add_argument("-o", "--output", default="report.html", help="output HTML file (default report.html)")
    s.set_defaults(func=_cmd_report)

    s = sub.add_parser("compare", help="compare two runs; exit 1 regression, 2 nothing comparable, 3 missing "
                       "cases or measurements", epilog=COMPARE_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("baseline", help="run directory, or results directory (newest record per case)")
    s.add_argument("current", help="run directory, or results directory (newest record per case)")
    s.add_argument("--fail-on", action="append", default=[], metavar="ITEM",
                   help="METRIC:THRESHOLD or a gate (missing, unmeasured, status; no-GATE switches it off); "
                        "repeatable or comma-separated; default p50:10%% plus every gate")
    s.add_argument("-o", "--output", default=None, help="also write an HTML comparison view")
    s.set_defaults(func=_cmd_compare)

    s = sub.add_parser("trend", help="p50 per case over many runs of the same machine")
    s.add_argument("results", nargs="+")
    s.add_argument("-o", "--output", default="trend.html")
    s.set_defaults(func=_cmd_trend)

    s = sub.add_parser("site", help="the nightly site: index of nights and machines, each night's report and "
                       "comparison, the trend, one shared plotly.js")
    s.add_argument("nights", help="directory of nights: <nights>/<night>/<run-id>/records.jsonl")
    s.add_argument("-o", "--output", default="site", help="site directory (default site/)")
    s.add_argument("--fail-on", action="append", default=[], metavar="ITEM",
                   help="criteria of each night's comparison with the night before (as harness compare)")
    s.add_argument("--keep", type=int, default=30, help="newest nights shown (default 30; 0 = all)")
    s.set_defaults(func=_cmd_site)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``harness`` console script: 0 ok, 1 a failed case or a regression, 2 a usage error."""
    args = build_parser().parse_args(argv)  # argparse's own usage errors exit 2 too
    try:
        return int(args.func(args) or 0)
    except (HarnessError, ValueError, FileNotFoundError) as exc:
        print(f"harness {args.command}: error: {exc}", file=sys.stderr)
        return 2


def run_one_cli(model: str, backend: str, precision: str, *, json_out: bool = False, in_process: bool = False,
                measure: bool = True, timeout_s: float = 600.0, threads: int | None = None,
                zoo_files: Sequence[str] = (), bench: bool = False, batches: Sequence[int] | None = None,
                out: IO[str] | None = None) -> int:
    """``harness run``: one case, printed as JSON or a summary; exit 0 for pass/fallback/xfail, else 1.

    Usage errors (unknown or unrunnable model, backend or precision, bad limits, a broken zoo file) raise
    ``HarnessError``/``ValueError`` before any case starts (``main``: exit 2), never a failed case's 1.
    """
    out = out or sys.stdout
    from model_zoo import get_model

    load_zoo_files(zoo_files)
    get_model(model)  # unknown: lists the zoo; unavailable here: says what to install
    check_threads(threads)
    check_timeout(timeout_s, "--timeout")
    name = backends.canonical(backend)
    if (reason := backends.get(name)().unavailable_reason()) is not None:
        raise HarnessError(f"--backend {name} cannot run here: {reason}. "
                           f"Available here: {', '.join(backends.available()) or 'none'}.")
    opts: MeasureOptions | None = None
    if measure:
        opts = (MeasureOptions.bench if bench else MeasureOptions.quick)(
            batches=tuple(int(b) for b in batches) if batches else None)
    req = CaseRequest(model, backend, Precision.parse(precision), suite="cli", threads=threads,
                      zoo_files=tuple(str(Path(f).resolve()) for f in zoo_files), measure=opts)
    if in_process:
        from harness.run.case import run_case

        record = run_case(req)
    elif opts is not None and opts.isolated:  # --bench: each trial alone in a fresh child (harness.exec.rounds)
        from harness.exec.rounds import run_rounds

        record = run_rounds([req], lambda r: run_in_subprocess(r, timeout_s=timeout_s))[req]
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


if __name__ == "__main__":
    sys.exit(main())
