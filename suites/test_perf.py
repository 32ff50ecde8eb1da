"""Performance: latency, throughput sweep, peak memory and roofline of every model x backend x precision.

Each trial of a case runs alone in a fresh child process, and trials are spread
over the run in rounds (``harness.exec.rounds``: trial 1 of every case, then
trial 2, ...; all of them before the first perf test reports), with the timing
options of the session (``--bench``: 5 longer trials; ``--batch 1,8`` for the
sweep). ``--in-process`` times the trials back to back in this process.
Records are written with suite ``perf`` as each test reports.
The conformance suite records a quick latency of every passing case already;
this suite is for throughput sweeps and isolated measurements. Precisions a backend runs only
through a reference path (``Backend.slow_precisions``, e.g. torch fp16 on CPU)
are skipped: they say nothing about deployment speed. Timing cases side by side
is meaningless, so this suite refuses to run under pytest-xdist workers.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest

from harness import backends
from harness.core.options import CaseRequest
from harness.core.record import Record
from harness.pytest_plugin import HARNESS_KEY, HarnessConfig, run_request, session_request

pytestmark = pytest.mark.perf

XDIST_MESSAGE = ("the perf suite measures latency and cannot share the CPU with other tests: run it without "
                 "pytest-xdist (drop -n / --numprocesses, or pass -n 0)")


@pytest.fixture(scope="module", autouse=True)
def _refuse_parallel_timing(request: pytest.FixtureRequest) -> None:
    if hasattr(request.config, "workerinput"):
        pytest.fail(XDIST_MESSAGE, pytrace=False)


def _benchmarked(case: CaseRequest) -> bool:
    return case.precision not in backends.get(case.backend).slow_precisions


@pytest.fixture(scope="session")
def perf_records(request: pytest.FixtureRequest) -> dict[CaseRequest, Record]:
    """Every selected perf case measured in rounds (``harness.exec.rounds``), once, at the first perf test:
    trial r of every case, then trial r + 1, each trial alone in a fresh child, so a case's trials lie a
    round apart. With ``--in-process`` the trials run back to back in this process instead."""
    if hasattr(request.config, "workerinput"):
        pytest.fail(XDIST_MESSAGE, pytrace=False)
    hc = request.config.stash[HARNESS_KEY]
    if hc.in_process:
        return {}
    cases = [item.callspec.params["case"] for item in request.session.items
             if getattr(item, "originalname", None) == "test_perf" and "case" in item.callspec.params]
    wanted = [session_request(hc, _perf_request(hc, c)) for c in cases if _benchmarked(c)]
    writer = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def progress(line: str) -> None:  # to the terminal, past pytest's output capture
        if writer is None:
            return
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            writer.write_line(f"perf {line}")

    from harness.exec.rounds import run_rounds

    return run_rounds(wanted, lambda c: run_request(hc, c), progress)


def _perf_request(hc: HarnessConfig, case: CaseRequest) -> CaseRequest:
    return replace(case, suite="perf", measure=hc.measure)


def test_perf(case, harness_run, harness_config, perf_records):
    if not _benchmarked(case):
        pytest.skip(f"{case.backend} {case.precision.value} runs through a reference (non-deployment) path; "
                    "not benchmarked (Backend.slow_precisions)")
    request = session_request(harness_config, _perf_request(harness_config, case))
    record = harness_run(request, record=perf_records.get(request))
    assert record.status == "pass", f"{record.status}: {record.reason}"
    latency = record.latency
    assert latency is not None, f"a passing perf case must carry its latency: {record.extra.get('measure_error')}"
    assert latency["n"] >= harness_config.measure.min_iterations
    assert len(latency["trials_p50_ms"]) == harness_config.measure.trials
    assert latency["p50_ms"] > 0
    assert record.throughput, "the throughput sweep produced no entry"
    if not harness_config.in_process:
        assert record.peak_rss_mb is not None, "peak RSS is measured in the case's child process"
