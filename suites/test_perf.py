"""Performance: latency, throughput sweep, peak memory and roofline of every model x backend x precision.

Each case is run alone in a fresh child process (unless ``--in-process``) with
the timing options of the session (``--bench`` for longer runs, ``--batch 1,8``
for the sweep; interleaved trials either way) and recorded with suite ``perf``.
The conformance suite records a quick latency of every passing case already;
this suite is for throughput sweeps and isolated measurements. Precisions a backend runs only
through a reference path (``Backend.slow_precisions``, e.g. torch fp16 on CPU)
are skipped: they say nothing about deployment speed. Timing cases side by side
is meaningless, so this suite refuses to run under pytest-xdist workers.
"""

from __future__ import annotations

import pytest

from harness import backends

pytestmark = pytest.mark.perf

XDIST_MESSAGE = ("the perf suite measures latency and cannot share the CPU with other tests: run it without "
                 "pytest-xdist (drop -n / --numprocesses, or pass -n 0)")


@pytest.fixture(scope="module", autouse=True)
def _refuse_parallel_timing(request: pytest.FixtureRequest) -> None:
    if hasattr(request.config, "workerinput"):
        pytest.fail(XDIST_MESSAGE, pytrace=False)


def test_perf(case, harness_run, harness_config):
    cls = backends.get(case.backend)
    if case.precision in cls.slow_precisions:
        pytest.skip(f"{case.backend} {case.precision.value} runs through a reference (non-deployment) path; "
                    "not benchmarked (Backend.slow_precisions)")
    record = harness_run(case, suite="perf", measure=harness_config.measure)
    assert record.status == "pass", f"{record.status}: {record.reason}"
    latency = record.latency
    assert latency is not None, f"a passing perf case must carry its latency: {record.extra.get('measure_error')}"
    assert latency["n"] >= harness_config.measure.min_iterations
    assert len(latency["trials_p50_ms"]) == harness_config.measure.trials
    assert latency["p50_ms"] > 0
    assert record.throughput, "the throughput sweep produced no entry"
    if not harness_config.in_process:
        assert record.peak_rss_mb is not None, "peak RSS is measured in the case's child process"
