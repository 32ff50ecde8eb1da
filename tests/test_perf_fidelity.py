"""Does the harness measure what the engines' own tools measure?

OpenVINO's ``benchmark_app`` (shipped in the openvino wheel) in sync mode, one
stream, the same threads and shape, against ``harness.run.timing.measure`` on the
harness's OpenVINO session of the same IR (converted from the ONNX export of
``mobilenet_tiny``). The assertion is on the ratio of medians, within a band
wide enough for a shared 2-core machine; the measured numbers are printed
(``-s``) and attached to the test report (``record_property``).
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

from harness import backends
from harness.core.types import Precision
from harness.model.export import ExportedModel
from harness.model.inputs import make_feeds
from harness.run import timing
from model_zoo import get_model

pytestmark = pytest.mark.perf

MODEL = "mobilenet_tiny"
SECONDS = 2.0
ROUNDS = 3
RATIO_BAND = (0.75, 1.33)
MEDIAN_LINE = re.compile(r"Median:\s+([0-9.]+)\s*(ms|us)")  # it switches to us below 1 ms


@pytest.fixture(scope="module")
def ov_session(tmp_path_factory):
    pytest.importorskip("openvino", reason="ov: Python package 'openvino' not installed")
    if shutil.which("benchmark_app") is None:
        pytest.skip("benchmark_app (from the openvino wheel) is not on PATH")
    threads = backends.get("ov")().threads
    spec = get_model(MODEL)
    model = ExportedModel(spec, root=tmp_path_factory.mktemp("fidelity-cache"))
    session = backends.create("ov", threads=threads).load(model, Precision.FP32, tmp_path_factory.mktemp("work"))
    feeds = make_feeds(spec, np.random.default_rng(0))
    yield session, feeds, threads
    session.close()


def benchmark_app_median_ms(xml: Path, feeds: dict[str, np.ndarray], threads: int, seconds: float) -> float:
    shape = ",".join(f"{k}[{','.join(map(str, v.shape))}]" for k, v in feeds.items())
    cmd = ["benchmark_app", "-m", str(xml), "-d", "CPU", "-api", "sync", "-nstreams", "1", "-nthreads", str(threads),
           "-hint", "none", "-shape", shape, "-ip", "f32", "-t", str(int(seconds))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    found = MEDIAN_LINE.search(out.stdout)
    assert found, f"no 'Median:' line in benchmark_app output:\n{out.stdout[-3000:]}\n{out.stderr[-2000:]}"
    return float(found.group(1)) / (1000.0 if found.group(2) == "us" else 1.0)


def test_harness_median_matches_benchmark_app(ov_session, record_property):
    """Interleaved rounds (harness, then benchmark_app) so a busy machine's drift hits both alike.

    Asserted: ``timing.measure`` on the compiled model's own call (``infer()`` on preset input
    tensors, what ``benchmark_app`` calls in its inference-only mode) agrees with benchmark_app.
    benchmark_app's statistics are the runtime's own ``request.latency`` (C++ side), so the
    harness's wall-clock samples also include the Python binding's per-call cost: a few tens of
    microseconds, visible on a sub-millisecond model. Reported beside it: the same ratio for the
    OpenVINO session's ``run(feeds)`` (inputs in, outputs copied out).
    """
    session, feeds, threads = ov_session
    request = session.request
    for name, value in feeds.items():
        request.get_tensor(name).data[...] = value
    opts = {"min_time_s": SECONDS / 2, "min_iterations": 50, "warmup": 20, "max_samples": 10**6}
    engine_ms, session_ms, tool_ms = [], [], []
    for _ in range(ROUNDS):
        engine_ms.append(timing.measure(request.infer, **opts).p50_ms)
        session_ms.append(timing.measure(lambda: session.run(feeds), **opts).p50_ms)
        tool_ms.append(benchmark_app_median_ms(Path(session.artifact), feeds, threads, SECONDS))
    ratio = statistics.median(engine_ms) / statistics.median(tool_ms)
    session_ratio = statistics.median(session_ms) / statistics.median(tool_ms)
    record_property("benchmark_app_median_ms", tool_ms)
    record_property("harness_p50_ms", engine_ms)
    record_property("session_run_p50_ms", session_ms)
    record_property("ratio", round(ratio, 3))
    record_property("session_ratio", round(session_ratio, 3))
    print(f"\n{MODEL} ov fp32 threads={threads}: benchmark_app median {_ms(tool_ms)}; harness p50 of infer() "
          f"{_ms(engine_ms)} -> ratio {ratio:.3f}; of session.run(feeds) {_ms(session_ms)} -> "
          f"ratio {session_ratio:.3f}")
    assert RATIO_BAND[0] <= ratio <= RATIO_BAND[1], (
        f"harness p50 {engine_ms} ms vs benchmark_app median {tool_ms} ms: ratio {ratio:.3f} outside {RATIO_BAND}")


def _ms(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "] ms"


def test_per_call_overhead_of_the_timed_loop(ov_session, record_property):
    """On a sub-millisecond model: per-call timing vs a bare loop of the same calls, the Python-side
    wall time vs the runtime's own ``request.latency`` of the same calls, and session.run vs infer()."""
    session, feeds, _ = ov_session
    request = session.request
    for name, value in feeds.items():
        request.get_tensor(name).data[...] = value
    iterations, rounds = 300, 7
    bare, timed, internal, wrapped = [], [], [], []
    for _ in range(rounds):  # paired rounds: drift of a shared machine hits both halves of a pair alike
        bare.append(timing.bare_loop_ms(request.infer, iterations))
        engine_ms: list[float] = []
        lat = timing.measure(lambda out=engine_ms: (request.infer(), out.append(request.latency)), min_time_s=0.0,
                             min_iterations=iterations, warmup=0, max_samples=iterations)
        timed.append(lat.mean_ms)
        internal.append(statistics.median(engine_ms) / lat.p50_ms)
        wrapped.append(timing.bare_loop_ms(lambda: session.run(feeds), iterations))
    paired = statistics.median(t / b for t, b in zip(timed, bare, strict=True))
    bare_ms, run_ms = statistics.median(bare), statistics.median(wrapped)
    record_property("bare_loop_ms", bare_ms)
    record_property("timed_over_bare", paired)
    record_property("session_run_ms", run_ms)
    record_property("runtime_latency_over_wall_p50", internal)
    print(f"\nper call: bare loop of infer() {bare_ms * 1e3:.1f} us, timed loop / bare loop {paired:.3f} "
          f"(median of {rounds} paired rounds); runtime's own latency / wall p50 of the same calls "
          f"{[round(x, 3) for x in internal]}; session.run(feeds) {run_ms * 1e3:.1f} us "
          f"(wrapper {(run_ms - bare_ms) * 1e3:+.1f} us)")
    assert RATIO_BAND[0] <= paired <= RATIO_BAND[1]
    assert all(0.3 < x <= 1.05 for x in internal)  # the runtime's own time is inside the harness's wall time


# ---------------------------------------------------------------- FLOPs, CPU peak and the perf suite


@pytest.fixture
def flops_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path_factory.getbasetemp() / "flops-cache"))


@pytest.mark.usefixtures("flops_cache")
@pytest.mark.parametrize("name", ["resnet_tiny", "mobilenet_tiny", "srcnn_tiny"])
def test_onnx_flops_equal_torch_flop_counter(name):
    """Two independent counts of the same network: the ONNX graph's and PyTorch's FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from harness.core.options import CaseRequest
    from harness.run.perf import model_flops

    spec = get_model(name)
    counted = model_flops(CaseRequest(name, "ort", Precision.FP32), spec)
    feeds = make_feeds(spec, np.random.default_rng(0))
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        spec.build()(*[torch.from_numpy(feeds[t.name]) for t in spec.inputs])
    assert counted["flops"] == counter.get_total_flops() > 0
    assert counted["uncounted_nodes"] == []


@pytest.mark.usefixtures("flops_cache")
def test_onnx_flops_count_recurrent_layers():
    """FlopCounterMode does not see inside nn.LSTM; the ONNX count must: 2 x seq x batch x 4H x (I + H) per layer."""
    from harness.core.options import CaseRequest
    from harness.run.perf import model_flops

    spec = get_model("lstm_tiny")
    counted = model_flops(CaseRequest("lstm_tiny", "ort", Precision.FP32), spec)
    lstm = next(m for m in spec.build().modules() if type(m).__name__ == "LSTM")
    seq, features = make_feeds(spec, np.random.default_rng(0))["input"].shape[1:]
    h, dirs = lstm.hidden_size, 2 if lstm.bidirectional else 1
    expected = sum(2 * seq * 1 * dirs * 4 * h * ((features if layer == 0 else h * dirs) + h)
                   for layer in range(lstm.num_layers))
    assert counted["by_op"]["LSTM"] == expected


def test_cpu_peak_scales_with_threads():
    from harness.run.perf import cpu_peak_gflops

    full = cpu_peak_gflops(threads=2)
    if full is None:
        pytest.skip("no AVX CPU or no clock information: peak not derivable here")
    one = cpu_peak_gflops(threads=1)
    assert one["peak_gflop_s"] * 2 == pytest.approx(full["peak_gflop_s"], abs=0.2)
    assert "FMA" in full["peak_basis"]


ROOT = Path(__file__).resolve().parent.parent


def run_perf_suite(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pytest", "suites/test_perf.py", "-p", "no:cacheprovider", "-q",
           "--model", "resnet_tiny", "--backend", "ort", "--precision", "fp32", "--results-dir", str(tmp_path),
           "--run-id", "perf", "--no-report", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # an outer xdist worker's id
    env["HARNESS_CACHE"] = str(tmp_path / "cache")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_perf_suite_records_latency_throughput_memory_and_roofline(tmp_path):
    from harness.results import read_records

    proc = run_perf_suite(tmp_path, "--batch", "1,2")
    assert proc.returncode == 0, proc.stdout[-3000:]
    (record,) = read_records(tmp_path / "perf")
    assert (record.suite, record.status) == ("perf", "pass")
    assert record.latency["n"] >= 10
    assert record.latency["batch"] == 1
    assert [t["batch"] for t in record.throughput] == [1, 2]
    assert all(t["items_per_s"] > 0 for t in record.throughput)
    assert record.peak_rss_mb > 0
    roof = record.extra["roofline"]
    assert roof["flops"] == 864576  # resnet_tiny at 1x3x32x32, as torch's FlopCounterMode counts it
    assert roof["achieved_gflop_s"] == pytest.approx(roof["gflops"] / (record.latency["p50_ms"] / 1e3), rel=1e-3)


def test_perf_suite_refuses_xdist(tmp_path):
    pytest.importorskip("xdist")
    proc = run_perf_suite(tmp_path, "-n", "2")
    assert proc.returncode != 0
    assert "cannot share the CPU with other tests: run it without pytest-xdist" in proc.stdout
