"""The pytest plugin: options, parametrization from the registries, records, summary.

Loaded by the repository's ``conftest.py`` (``pytest_plugins``). A test that
takes the ``case`` fixture is parametrized over model x backend x precision
(ids like ``resnet18-ort-int8``); ``harness_run(case)`` runs it through
``harness.run.case`` (in a child process unless ``--in-process``), appends the
record and turns non-verdict outcomes into skips/xfails with their reasons.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from harness import backends
from harness.core.errors import HarnessError
from harness.core.options import CaseRequest, MeasureOptions
from harness.core.record import Record
from harness.core.types import Cause, Precision, Status
from harness.results import ResultStore, new_run_id
from harness.run.case import run_case

CASE_MARKER = "harness_cases"
CASE_MARKER_KEYS = {"tags", "models", "backends", "precisions", "suite"}


@dataclass
class HarnessConfig:
    """Resolved session options, kept in ``config.stash``."""

    backends: list[str]
    explicit_backends: bool
    precisions: list[Precision]
    model_patterns: list[str]
    tags: list[str]
    zoo_files: tuple[str, ...]
    store: ResultStore
    threads: int | None
    in_process: bool
    case_timeout_s: float
    shard: tuple[int, int] | None
    report: bool
    measure: MeasureOptions
    """The perf suite's timing options (``--bench``, ``--batch``): isolated, with a throughput sweep."""
    quick_measure: MeasureOptions | None = None
    """Every passing conformance case's latency: quick and in the shared child (``--bench``: the perf
    suite's options without the sweep; ``--no-measure``: None, verdicts only)."""
    prefetch: bool = False
    """Cases may be queued ahead in the child (``upcoming``): not with --in-process, nor in an xdist worker
    (the workers keep both cores busy already)."""
    prepared: bool = False
    records: list[Record] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    session_requests: dict[CaseRequest, CaseRequest] = field(default_factory=dict)


HARNESS_KEY = pytest.StashKey[HarnessConfig]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "inference conformance harness")
    group.addoption("--backend", action="append", default=[], metavar="NAME",
                    help=f"backend to run (repeatable): {backends.describe_names()}. Default: every available backend; "
                         "unavailable ones are skipped with the reason.")
    group.addoption("--precision", action="append", default=[], metavar="P",
                    help="fp32, fp16 or int8 (repeatable; default all three)")
    group.addoption("--model", action="append", default=[], metavar="PATTERN",
                    help="zoo models to run, shell wildcards (repeatable; default all)")
    group.addoption("--tag", action="append", default=[], metavar="TAG",
                    help="only models carrying this tag (repeatable: all must match), e.g. --tag ci")
    group.addoption("--zoo-file", action="append", default=[], metavar="PATH",
                    help="a Python file whose @register_model functions join the zoo (repeatable; trusted code)")
    group.addoption("--results-dir", default="results", metavar="DIR",
                    help="where run directories are written (default: results/)")
    group.addoption("--run-id", default=None, help="run id (default: UTC time + random suffix)")
    group.addoption("--threads", type=int, default=None, help="engine threads (default: usable CPUs)")
    group.addoption("--in-process", action="store_true",
                    help="run cases in the pytest process (debugging) instead of one child process per case")
    group.addoption("--case-timeout", type=float, default=600.0, metavar="SECONDS",
                    help="per-case time limit in the child process; exceeding it records 'timeout' (default 600)")
    group.addoption("--shard", default=None, metavar="I/N",
                    help="run only shard I of N (1-based; stable assignment by test id) for CI matrices")
    group.addoption("--onnx-cases", default=None, choices=("ci", "all"), metavar="SET",
                    help="ONNX conformance suite: 'ci' (curated subset, default) or 'all' (every shipped case; "
                         "nightly)")
    group.addoption("--onnx-case", action="append", default=[], metavar="PATTERN",
                    help="ONNX conformance case ids, shell wildcards (repeatable), e.g. 'node-test_conv*'")
    group.addoption("--no-report", action="store_true", help="do not write the HTML report at the end")
    group.addoption("--bench", action="store_true",
                    help="rigorous latency: every measured case alone in a fresh process, 5 trials, min 5 s and "
                         "50 calls (default: a quick 0.3 s / 15-call latency of every passing conformance case)")
    group.addoption("--no-measure", action="store_true",
                    help="verdicts only: no latency for conformance cases (the perf suite still measures)")
    group.addoption("--batch", default=None, metavar="SIZES",
                    help="batch sizes for the throughput sweep in perf suites, e.g. 1,8 (default: 1 and the "
                         "model's declared batch sizes)")


def _usage(msg: str) -> pytest.UsageError:
    return pytest.UsageError(msg)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{CASE_MARKER}(tags=, models=, backends=, precisions=, suite=): "
                                       "restrict the cases a suite test is parametrized over")
    opt = config.option
    try:  # every usage error stops the session here: exit 4 with the message, before anything runs
        from harness.selection import check_selection, check_threads, check_timeout, load_zoo_files

        load_zoo_files(opt.zoo_file)
        check_selection(opt.model, opt.tag)
        explicit = [backends.canonical(b) for b in opt.backend]
        precisions = [Precision.parse(p) for p in opt.precision] or list(Precision)
        check_threads(opt.threads)
        check_timeout(opt.case_timeout, "--case-timeout")
    except (HarnessError, ValueError) as exc:
        raise _usage(str(exc)) from None
    if explicit:
        for name in explicit:
            reason = backends.get(name)().unavailable_reason()
            if reason is not None:
                raise _usage(f"--backend {name} was requested but cannot run here: {reason}. "
                             f"Known backends: {', '.join(backends.names())}; "
                             f"available here: {', '.join(backends.available()) or 'none'}.")
    run_id = getattr(config, "workerinput", {}).get("harness_run_id") or opt.run_id or new_run_id()
    shard = _parse_shard(opt.shard) if opt.shard else None
    batches = _parse_batches(opt.batch) if opt.batch else None
    measure = (MeasureOptions.bench if opt.bench else MeasureOptions.standard)(batches=batches)
    quick = None if opt.no_measure else MeasureOptions.bench(batches=()) if opt.bench else MeasureOptions.quick()
    try:
        store = ResultStore(opt.results_dir, run_id)
    except ValueError as exc:
        raise _usage(f"--run-id: {exc}") from None
    config.stash[HARNESS_KEY] = HarnessConfig(
        backends=list(dict.fromkeys(explicit)) or backends.names(), explicit_backends=bool(explicit),
        precisions=list(dict.fromkeys(precisions)), model_patterns=opt.model or ["*"], tags=opt.tag,
        zoo_files=tuple(str(Path(f).resolve()) for f in opt.zoo_file),
        store=store, threads=opt.threads, in_process=opt.in_process,
        case_timeout_s=opt.case_timeout, shard=shard, report=not opt.no_report, measure=measure,
        quick_measure=quick, prefetch=not opt.in_process and not hasattr(config, "workerinput"),
    )


def _parse_batches(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise _usage(f"--batch {text!r}: expected comma-separated positive integers, e.g. --batch 1,8") from None
    if not sizes or min(sizes) < 1:
        raise _usage(f"--batch {text!r}: expected comma-separated positive integers, e.g. --batch 1,8")
    return sizes


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise _usage(f"--shard {text!r}: expected I/N with 1 <= I <= N, e.g. --shard 2/4") from None
    if not 1 <= i <= n:
        raise _usage(f"--shard {text!r}: expected I/N with 1 <= I <= N, e.g. --shard 2/4")
    return i, n


def pytest_configure_node(node: Any) -> None:
    """xdist controller: every worker writes into the controller's run."""
    node.workerinput["harness_run_id"] = node.config.stash[HARNESS_KEY].store.run_id


def _marker_kwargs(metafunc: pytest.Metafunc) -> dict[str, Any]:
    marker = metafunc.definition.get_closest_marker(CASE_MARKER)
    if marker is None:
        return {}
    unknown = set(marker.kwargs) - CASE_MARKER_KEYS
    if unknown or marker.args:
        raise _usage(f"{metafunc.definition.nodeid}: @pytest.mark.{CASE_MARKER} takes keywords "
                     f"{sorted(CASE_MARKER_KEYS)}; got {sorted(unknown) or marker.args}")
    return dict(marker.kwargs)


def selected_models(hc: HarnessConfig, tags: list[str] = (), models: list[str] | None = None) -> list[str]:
    """Zoo models selected by --model/--tag and the suite marker."""
    from model_zoo import list_models

    names = list_models(hc.model_patterns, [*hc.tags, *tags])
    if models is not None:
        names = [n for n in names if n in models]
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" not in metafunc.fixturenames and "zoo_model" not in metafunc.fixturenames:
        return  # e.g. the ONNX operator suite: no zoo (and so no torch) in this process
    hc = metafunc.config.stash[HARNESS_KEY]
    kw = _marker_kwargs(metafunc)
    suite = kw.get("suite") or metafunc.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    models = selected_models(hc, kw.get("tags", []), kw.get("models"))
    if "case" in metafunc.fixturenames:
        bnames = [b for b in hc.backends if kw.get("backends") is None or b in kw["backends"]]
        precs = [p for p in hc.precisions if kw.get("precisions") is None or p.value in kw["precisions"]]
        cases = [CaseRequest(m, b, p, run_id=hc.store.run_id, suite=suite, threads=hc.threads,
                             zoo_files=hc.zoo_files, test_id=f"{m}-{b}-{p.value}")
                 for m in models for b in bnames for p in precs]
        metafunc.parametrize("case", [pytest.param(c, marks=_marks(c.model)) for c in cases],
                             ids=[c.test_id for c in cases])
    elif "zoo_model" in metafunc.fixturenames:
        metafunc.parametrize("zoo_model", [pytest.param(m, marks=_marks(m)) for m in models], ids=models)


def _marks(model: str) -> list[pytest.MarkDecorator]:
    """A model tagged ``slow`` (e.g. the 224x224 ``light_*`` ONNX models) carries the ``slow`` marker: out of
    the default run (pyproject's ``-m "not slow"``), in the nightly one (``-m "not perf"``)."""
    from model_zoo import get_model

    return [pytest.mark.slow] if "slow" in get_model(model).tags else []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    hc = config.stash[HARNESS_KEY]
    if hc.shard is None:
        return
    import zlib

    i, n = hc.shard
    keep, drop = [], []
    for item in items:
        (keep if zlib.crc32(item.nodeid.encode()) % n == i - 1 else drop).append(item)
    items[:] = keep
    config.hook.pytest_deselected(items=drop)


def _is_case_item(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    return callspec is not None and any(k in callspec.params for k in ("case", "zoo_model", "onnx_case"))


def pytest_collection_finish(session: pytest.Session) -> None:
    hc = session.config.stash[HARNESS_KEY]
    if session.config.option.collectonly or not any(_is_case_item(i) for i in session.items):
        return
    try:
        hc.store.prepare()  # every xdist worker too: an unwritable results dir stops the run before any case
        if not hasattr(session.config, "workerinput"):  # under xdist the controller writes run.json at the end
            _write_start_info(hc)
    except OSError as exc:
        pytest.exit(str(exc), returncode=4)
    hc.prepared = True


def pytest_sessionstart(session: pytest.Session) -> None:
    """xdist controller: refuse an unwritable results dir before any worker starts (workers cannot exit cleanly)."""
    config = session.config
    if getattr(config.option, "dist", "no") == "no" or hasattr(config, "workerinput"):
        return
    try:
        check_writable(config.stash[HARNESS_KEY].store.dir)
    except OSError as exc:
        pytest.exit(str(exc), returncode=4)


def check_writable(path: Path) -> None:
    """Raise OSError like ``ResultStore.prepare`` if files cannot be written under ``path``; create nothing."""
    import errno
    import tempfile

    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
        with tempfile.TemporaryFile(dir=existing) as probe:
            probe.write(b"x" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise OSError(exc.errno, f"results directory {path} is not writable: {exc.strerror}. "
                      "Pass --results-dir to a writable directory with free space.") from exc


def _write_start_info(hc: HarnessConfig) -> None:
    hc.store.write_run_info(started_at=hc.started_at, argv=sys.argv[1:], backends=hc.backends,
                            precisions=[p.value for p in hc.precisions], shard=hc.shard)


def session_request(hc: HarnessConfig, case: CaseRequest) -> CaseRequest:
    """The request as this session runs it: the session's run id, threads and zoo files, whatever it says.
    Remembered: the operator suite announces each case eight times (``upcoming``) before it runs it."""
    known = hc.session_requests.get(case)
    if known is None:
        known = hc.session_requests[case] = replace(case, run_id=hc.store.run_id, threads=hc.threads,
                                                    zoo_files=hc.zoo_files)
    return known


def run_request(hc: HarnessConfig, case: CaseRequest, upcoming: Sequence[CaseRequest] = ()) -> Record:
    """Run one (session) request: in a child process, or in this one with --in-process. ``upcoming``: the
    cases the next tests will run, in order (the child may start them early; see ``harness.exec.supervisor``);
    ignored where the session does not prefetch."""
    if hc.in_process:
        return run_case(case)
    from harness.exec.supervisor import run_in_subprocess

    ahead = [session_request(hc, c) for c in upcoming] if hc.prefetch else []
    return run_in_subprocess(case, timeout_s=hc.case_timeout_s, upcoming=ahead)


def execute(hc: HarnessConfig, case: CaseRequest, upcoming: Sequence[CaseRequest] = (),
            record: Record | None = None) -> Record:
    """Run one case (child process unless --in-process) and append its record (``record``: already run)."""
    if record is None:
        record = run_request(hc, session_request(hc, case), upcoming)
    try:
        hc.store.append(record)
    except OSError as exc:  # a case whose record is not on disk whole must not pass
        pytest.fail(str(exc), pytrace=False)
    hc.records.append(record)
    return record


def apply_outcome(record: Record) -> Record:
    """Skip/xfail per status; return the record for the suite to assert on."""
    status = Status(record.status)
    if record.cause == Cause.HARNESS.value and status is not Status.PASS:
        pytest.fail(f"{record.status} caused by the harness (a bug of ours, not the engine's): {record.reason}",
                    pytrace=False)
    if status in (Status.SKIPPED, Status.UNSUPPORTED):
        pytest.skip(f"{record.status}: {record.reason}")
    if status is Status.XFAIL:
        pytest.xfail(record.reason)
    if status is Status.FALLBACK:
        pytest.xfail(f"precision fallback: {record.reason}")
    return record


@pytest.fixture
def harness_config(request: pytest.FixtureRequest) -> HarnessConfig:
    """The session's resolved harness options."""
    return request.config.stash[HARNESS_KEY]


@pytest.fixture
def harness_run(harness_config: HarnessConfig) -> Callable[..., Record]:
    """``harness_run(case, upcoming=(), record=None, **changes)``: run a case (or take its ``record`` when it
    was run already), record it, apply skip/xfail outcomes, return the record. ``upcoming``: the unmeasured
    cases the next tests will request, in order (optional; lets the child start them while pytest reports
    this one)."""

    def run(case: CaseRequest, upcoming: Sequence[CaseRequest] = (), record: Record | None = None,
            **changes: Any) -> Record:
        if changes:
            case = replace(case, **changes)
        return apply_outcome(execute(harness_config, case, upcoming, record))

    return run


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    hc = config.stash.get(HARNESS_KEY, None)
    if hc is None:
        return
    if not hc.prepared:
        # the xdist controller collects no items: its workers' records say whether cases ran
        if hasattr(config, "workerinput") or not hc.store.records_path.exists():
            return
        _write_start_info(hc)
        hc.prepared = True
    from harness.summary import status_table

    records = hc.store.records()
    tr = terminalreporter
    tr.section("harness")
    if records:
        for line in status_table(records).splitlines():
            tr.write_line(line)
    tr.write_line(f"records: {hc.store.records_path} ({len(records)} records)")
    from harness.run.case import phase_totals

    try:
        hc.store.write_run_info(finished_at=time.time(), records=len(records), exitstatus=int(exitstatus),
                                phases_s=phase_totals(records))
    except OSError as exc:
        tr.write_line(f"run.json: not updated ({exc}); the records above are on disk", red=True)
    if hc.report and records:
        try:
            from harness.report import build_report

            path = build_report([hc.store.dir], hc.store.dir / "report.html")
            tr.write_line(f"report:  {path}")
        except ImportError:
            pass
        except Exception as exc:  # the run's records are safe; a report failure must not hide them
            tr.write_line(f"report:  not written ({type(exc).__name__}: {exc}); "
                          f"retry with: harness report {hc.store.dir}", red=True)
