"""Does the harness measure what the engines' own tools measure?

OpenVINO's ``benchmark_app`` (shipped in the openvino wheel; sync API, one stream,
the same threads, ``-hint none``, ``-infer_precision f32``) against the harness's
timed call of the same IR (``Session.bind``: the native call with inputs bound
once), on a sub-millisecond model (``mobilenet_tiny``) and on ``resnet18``;
ONNX Runtime's timed call against a bare ``InferenceSession.run`` loop. Rounds
alternate harness and tool so a busy machine's drift hits both alike; the median
of the rounds' paired ratios is asserted only within a band wide enough for a
shared machine (targets on a quiet one: [0.95, 1.05] for the sub-millisecond
model, [0.97, 1.03] for resnet18). The measured numbers and the load average are
printed (``-s``) and attached to the test report (``record_property``).
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from engines import needs_ort

from harness import backends
from harness.core.types import Precision
from harness.model.export import ExportedModel
from harness.model.inputs import make_feeds
from harness.run import timing
from model_zoo import get_model

pytestmark = pytest.mark.perf

SECONDS = 3
ROUNDS = 5
RATIO_BAND = (0.75, 1.33)
TARGETS = {"mobilenet_tiny": (0.95, 1.05), "resnet18": (0.97, 1.03)}
MEDIAN_LINE = re.compile(r"Median:\s+([0-9.]+)\s*(ms|us)")  # it switches to us below 1 ms


def _load() -> float:
    return round(os.getloadavg()[0], 2)


@pytest.fixture(scope="module", params=sorted(TARGETS))
def ov_session(request, tmp_path_factory):
    pytest.importorskip("openvino", reason="ov: Python package 'openvino' not installed")
    if shutil.which("benchmark_app") is None:
        pytest.skip("benchmark_app (from the openvino wheel) is not on PATH")
    threads = backends.get("ov")().threads
    spec = get_model(request.param)
    model = ExportedModel(spec)  # the shared cache: resnet18's export is reused, not redone per run
    session = backends.create("ov", threads=threads).load(model, Precision.FP32, tmp_path_factory.mktemp("work"))
    feeds = make_feeds(spec, np.random.default_rng(0))
    yield request.param, session, feeds, threads
    session.close()


def benchmark_app_median_ms(xml: Path, feeds: dict[str, np.ndarray], threads: int, seconds: int) -> float:
    shape = ",".join(f"{k}[{','.join(map(str, v.shape))}]" for k, v in feeds.items())
    cmd = ["benchmark_app", "-m", str(xml), "-d", "CPU", "-api", "sync", "-nstreams", "1", "-nthreads", str(threads),
           "-hint", "none", "-infer_precision", "f32", "-shape", shape, "-t", str(seconds)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    found = MEDIAN_LINE.search(out.stdout)
    assert found, f"no 'Median:' line in benchmark_app output:\n{out.stdout[-3000:]}\n{out.stderr[-2000:]}"
    return float(found.group(1)) / (1000.0 if found.group(2) == "us" else 1.0)


def test_harness_median_matches_benchmark_app(ov_session, record_property):
    """The harness's p50 of the bound call (wall clock, Python included) over benchmark_app's median
    (the runtime's own ``request.latency``); beside it the runtime's latency of the harness's own calls
    (``engine_p50_ms``: the same counter benchmark_app reads) and the p50 of ``session.run(feeds)``."""
    name, session, feeds, threads = ov_session
    opts = {"min_time_s": SECONDS, "min_iterations": 50, "warmup": 20, "max_samples": 10**6}
    harness_ms, engine_ms, run_ms, tool_ms, loads = [], [], [], [], []
    for _ in range(ROUNDS):
        loads.append(_load())
        bound = session.bind(feeds)
        lat = timing.measure(bound.call, engine_ms=bound.engine_ms, **opts)
        harness_ms.append(lat.p50_ms)
        engine_ms.append(lat.engine_p50_ms)
        tool_ms.append(benchmark_app_median_ms(Path(session.artifact), feeds, threads, SECONDS))
        run_ms.append(timing.measure(lambda: session.run(feeds), **{**opts, "min_time_s": 1.0}).p50_ms)
    # paired: round i's harness over round i's tool, median over rounds (a round caught in a slow state of the
    # shared machine moves both halves of its pair, or is the outlier the median drops)
    ratio = statistics.median(h / t for h, t in zip(harness_ms, tool_ms, strict=True))
    engine_ratio = statistics.median(e / t for e, t in zip(engine_ms, tool_ms, strict=True))
    run_ratio = statistics.median(r / t for r, t in zip(run_ms, tool_ms, strict=True))
    of_medians = statistics.median(harness_ms) / statistics.median(tool_ms)
    low, high = TARGETS[name]
    for key, value in (("benchmark_app_median_ms", tool_ms), ("harness_p50_ms", harness_ms),
                       ("harness_engine_p50_ms", engine_ms), ("session_run_p50_ms", run_ms), ("load_1m", loads),
                       ("ratio", round(ratio, 3)), ("ratio_of_medians", round(of_medians, 3)),
                       ("engine_ratio", round(engine_ratio, 3)),
                       ("session_run_ratio", round(run_ratio, 3)), ("quiet_machine_target", [low, high])):
        record_property(key, value)
    print(f"\n{name} ov fp32 threads={threads} load={loads}: benchmark_app median {_ms(tool_ms)}; harness p50 "
          f"{_ms(harness_ms)} -> paired ratio {ratio:.3f}, ratio of medians {of_medians:.3f} (quiet-machine target "
          f"[{low}, {high}]); runtime latency of "
          f"the harness's calls {_ms(engine_ms)} -> {engine_ratio:.3f}; session.run(feeds) {_ms(run_ms)} -> "
          f"{run_ratio:.3f}")
    assert RATIO_BAND[0] <= ratio <= RATIO_BAND[1], (
        f"harness p50 {harness_ms} ms vs benchmark_app median {tool_ms} ms: ratio {ratio:.3f} outside {RATIO_BAND}")
    assert 0.3 < engine_ratio < 3.0  # the same runtime counter as the tool: a grossly different value is a bug


def test_ort_timed_call_matches_a_bare_run_loop(record_property):
    """ORT: the harness's timed call (IO binding) against ``InferenceSession.run(None, feeds)``, in paired
    rounds: p50 against the p50 of the same timed loop around ``sess.run``, and the timed loop's mean against
    a plain ``for`` loop of ``sess.run`` with no per-call timing (means include every preemption of a busy
    machine, so only they compare with a bare loop). The bound call does less per call (no feed dict, no
    output arrays), so both ratios sit at or below 1; a timed region covering the wrong work leaves the band."""
    pytest.importorskip("onnxruntime", reason="ort: Python package 'onnxruntime' not installed")
    spec = get_model("mobilenet_tiny")
    model = ExportedModel(spec)
    session = backends.create("ort").load(model, Precision.FP32, model.cache_dir / "work")
    feeds = make_feeds(spec, np.random.default_rng(0))
    sess = session.session
    iterations, rounds = 300, 5
    opts = {"min_time_s": 0.0, "min_iterations": iterations, "warmup": 3, "max_samples": iterations}
    p50s, means, bare_ms, run_p50, loads = [], [], [], [], []
    for _ in range(rounds):
        loads.append(_load())
        bare = timing.bare_loop_ms(lambda: sess.run(None, feeds), iterations)
        plain = timing.measure(lambda: sess.run(None, feeds), **opts)
        bound = timing.measure(session.bind(feeds).call, **opts)
        p50s.append(bound.p50_ms / plain.p50_ms)
        means.append(bound.mean_ms / bare)
        bare_ms.append(bare)
        run_p50.append(plain.p50_ms)
    p50_ratio, mean_ratio = statistics.median(p50s), statistics.median(means)
    for key, value in (("bare_run_loop_mean_ms", bare_ms), ("timed_run_p50_ms", run_p50), ("load_1m", loads),
                       ("harness_p50_over_run_p50", round(p50_ratio, 3)),
                       ("harness_mean_over_bare_mean", round(mean_ratio, 3))):
        record_property(key, value)
    print(f"\nort mobilenet_tiny load={loads}: sess.run p50 {statistics.median(run_p50) * 1e3:.1f} us, bare loop "
          f"mean {statistics.median(bare_ms) * 1e3:.1f} us; harness (IO binding) p50 / sess.run p50 {p50_ratio:.3f}, "
          f"harness mean / bare loop mean {mean_ratio:.3f}")
    assert 0.5 <= p50_ratio <= 1.1, f"bound p50 / sess.run p50 {p50_ratio:.3f} (rounds {p50s})"
    assert 0.5 <= mean_ratio <= RATIO_BAND[1], f"harness mean / bare loop {mean_ratio:.3f} (rounds {means})"


@pytest.mark.parametrize("ov_session", ["mobilenet_tiny"], indirect=True)
def test_per_call_overhead_of_the_timed_loop(ov_session, record_property):
    """On the sub-millisecond model: per-call timing vs a bare loop of the same bound calls, and the runtime's own
    ``request.latency`` vs the wall p50 of the same calls (it must lie inside the harness's wall time)."""
    _, session, feeds, _ = ov_session
    iterations, rounds = 300, 5
    bare, timed, internal = [], [], []
    for _ in range(rounds):  # paired rounds: drift of a shared machine hits both halves of a pair alike
        bound = session.bind(feeds)
        bare.append(timing.bare_loop_ms(bound.call, iterations))
        lat = timing.measure(bound.call, engine_ms=bound.engine_ms, min_time_s=0.0, min_iterations=iterations,
                             warmup=0, max_samples=iterations)
        timed.append(lat.mean_ms)
        internal.append(lat.engine_p50_ms / lat.p50_ms)
    paired = statistics.median(t / b for t, b in zip(timed, bare, strict=True))
    record_property("bare_loop_ms", statistics.median(bare))
    record_property("timed_over_bare", paired)
    record_property("runtime_latency_over_wall_p50", internal)
    print(f"\nper call: bare loop {statistics.median(bare) * 1e3:.1f} us, timed loop / bare loop {paired:.3f}; "
          f"runtime's own latency / wall p50 {[round(x, 3) for x in internal]}")
    assert RATIO_BAND[0] <= paired <= RATIO_BAND[1]
    assert all(0.3 < x <= 1.05 for x in internal)  # the runtime's own time is inside the harness's wall time


def _ms(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "] ms"


# ---------------------------------------------------------------- the perf suite end to end


ROOT = Path(__file__).resolve().parent.parent


def run_perf_suite(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pytest", "suites/test_perf.py", "-m", "perf", "-p", "no:cacheprovider", "-q",
           "--model", "resnet_tiny", "--backend", "ort", "--precision", "fp32", "--results-dir", str(tmp_path),
           "--run-id", "perf", "--no-report", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # an outer xdist worker's id
    env["HARNESS_CACHE"] = str(tmp_path / "cache")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@needs_ort
def test_perf_suite_records_latency_trials_throughput_memory_and_roofline(tmp_path):
    from harness.results import read_records

    proc = run_perf_suite(tmp_path, "--batch", "1,2")
    assert proc.returncode == 0, proc.stdout[-3000:]
    (record,) = read_records(tmp_path / "perf")
    assert (record.suite, record.status) == ("perf", "pass")
    assert record.latency["n"] >= 15
    assert record.latency["batch"] == 1
    assert len(record.latency["trials_p50_ms"]) == 3
    assert record.latency["isolated"] is True
    rounds = record.extra["rounds"]  # each trial in its own fresh process (harness.exec.rounds)
    assert len({r["pid"] for r in rounds}) == 3
    assert record.latency["trials_spread"].startswith("rounds")
    assert "round 3/3" in proc.stdout  # progress of the rounds
    assert record.latency["timed"].startswith("OrtSession.bind")
    assert [t["batch"] for t in record.throughput] == [1, 2]
    assert all(t["items_per_s"] > 0 and len(t["trials_p50_ms"]) == 3 for t in record.throughput)
    assert record.peak_rss_mb > 0
    assert record.timings_s["measure"] > 0
    roof = record.extra["roofline"]
    assert roof["flops"] == 864576  # resnet_tiny at 1x3x32x32, as torch's FlopCounterMode counts it
    assert roof["achieved_gflop_s"] == pytest.approx(roof["gflops"] / (record.latency["p50_ms"] / 1e3), rel=1e-3)


@needs_ort
def test_perf_suite_refuses_xdist(tmp_path):
    pytest.importorskip("xdist", reason="pytest-xdist not installed (extra 'dev')")
    proc = run_perf_suite(tmp_path, "-n", "2")
    assert proc.returncode != 0
    assert "cannot share the CPU with other tests: run it without pytest-xdist" in proc.stdout
