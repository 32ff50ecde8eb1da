"""The case worker: crashes, hangs and NaN become statuses, the session goes on, records survive a kill -9,
and no process a case started outlives it.

Fault injection uses the hidden test-only ``_fault_*`` backends (harness/backends/_fault.py) and
``nan_model`` below, a real model whose own output is NaN on part of its input range. This file is
also a zoo file: the worker's child loads it (``zoo_files``) to find ``nan_model``. The supervisor's
own behaviour is engine-free (the torch backend is the good case); the few tests that are about an
ONNX engine's path need ONNX Runtime and skip without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import torch
from engines import needs_ort
from torch import nn

from harness.cli import run_one_cli
from harness.core.options import CaseRequest, ExportOptions, MeasureOptions, request_from_json, request_to_json
from harness.core.types import Precision, TensorSpec
from harness.exec.supervisor import run_in_subprocess
from harness.results import read_records
from model_zoo import register_model

ROOT = Path(__file__).resolve().parent.parent
THIS_FILE = str(Path(__file__).resolve())
CASE_TIMEOUT_S = 8  # long enough for the good case on a loaded 2-core machine; the hang waits this long


class SqrtHead(nn.Module):
    """A conv whose output goes through sqrt: NaN wherever the conv is negative (as a real model bug would)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(self.conv(x))


@register_model(inputs=[TensorSpec("input", (1, 3, 8, 8))], tags={"fault"})
def nan_model() -> nn.Module:
    """Produces NaN for part of every normal input (test-only, tag 'fault')."""
    return SqrtHead()


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path_factory.getbasetemp() / "worker-cache"))


def test_request_round_trips_through_json():
    req = CaseRequest("resnet_tiny", "ort", Precision.INT8, run_id="r1", suite="perf", threads=2,
                      zoo_files=("/x/zoo.py",), measure=MeasureOptions(min_time_s=1.0, batches=(1, 8)), test_id="t",
                      export=ExportOptions(opset=18))
    back = request_from_json(request_to_json(req))
    assert back == req
    assert back.precision is Precision.INT8


def test_crash_and_hang_are_recorded_and_the_session_goes_on(tmp_path):
    """One real pytest session: a segfaulting engine, a hanging engine and a good one, in that order."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # an outer xdist worker's id
    env["HARNESS_FAULT"] = "segv@run"
    cmd = [sys.executable, "-m", "pytest", "suites/test_conformance.py", "-p", "no:cacheprovider", "-q",
           "--backend", "_fault_crash", "--backend", "_fault_hang", "--backend", "torch", "--model", "resnet_tiny",
           "--precision", "fp32", "--case-timeout", str(CASE_TIMEOUT_S), "--results-dir", str(tmp_path),
           "--run-id", "faults", "--no-report"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    records = {r.backend: r for r in read_records(tmp_path / "faults")}
    assert set(records) == {"_fault_crash", "_fault_hang", "torch"}, proc.stdout[-3000:]
    crash, hang, good = records["_fault_crash"], records["_fault_hang"], records["torch"]
    assert crash.status == "crash"
    assert "SIGSEGV" in crash.reason
    assert crash.extra["signal"] == "SIGSEGV"
    assert "crash_now" in crash.reason  # faulthandler's Python stack of the crashing thread is kept
    assert hang.status == "timeout"
    assert f"time limit of {CASE_TIMEOUT_S} s" in hang.reason
    assert "most recent call first" in hang.reason
    assert CASE_TIMEOUT_S <= hang.extra["worker"]["case_s"] < CASE_TIMEOUT_S + 5  # counted from "imports done"
    assert good.status == "pass", good.reason
    assert proc.returncode == 1  # the two faults fail their tests; the run itself completed
    assert "2 failed, 1 passed" in proc.stdout


def test_conformance_cases_share_a_child_measured_cases_get_their_own(monkeypatch):
    monkeypatch.setenv("HARNESS_FAULT", "segv@run")  # a fixed environment for the three cases below
    plain = CaseRequest("resnet_tiny", "torch", Precision.FP32)
    first, second = run_in_subprocess(plain, timeout_s=300), run_in_subprocess(plain, timeout_s=300)
    crashed = run_in_subprocess(CaseRequest("resnet_tiny", "_fault_crash", Precision.FP32), timeout_s=300)
    after = run_in_subprocess(plain, timeout_s=300)
    measured = run_in_subprocess(replace(plain, measure=MeasureOptions(min_time_s=0.1)), timeout_s=300)
    assert [r.status for r in (first, second, crashed, after, measured)] == ["pass", "pass", "crash", "pass", "pass"]
    assert second.extra["worker"]["pid"] == first.extra["worker"]["pid"]
    assert second.extra["worker"]["case_index"] == 1
    assert second.extra["worker"]["overhead_s"] < first.extra["worker"]["overhead_s"]  # no interpreter start
    assert after.extra["worker"]["case_index"] == 0  # the crash took its child with it; the next one is fresh
    assert measured.extra["worker"]["case_index"] == 0
    assert measured.extra["worker"]["pid"] != after.extra["worker"]["pid"]


def test_abort_at_load_is_a_crash_with_its_signal(monkeypatch):
    monkeypatch.setenv("HARNESS_FAULT", "abort@load")
    r = run_in_subprocess(CaseRequest("resnet_tiny", "_fault_crash", Precision.FP32), timeout_s=300)
    assert r.status == "crash"
    assert r.extra["signal"] == "SIGABRT"
    assert "_fault.py" in r.reason
    assert " in load" in r.reason  # the stack tail shows where it died


def test_engine_returning_nan_is_nonfinite():
    r = run_in_subprocess(CaseRequest("resnet_tiny", "_fault_nan", Precision.FP32), timeout_s=300)
    assert r.status == "nonfinite", r.reason
    assert r.metrics["nonfinite"] > 0


def test_model_producing_nan_is_nonfinite_never_pass():
    """The reference itself is NaN here: matching NaN with NaN must not count as agreement (even the same code)."""
    r = run_in_subprocess(CaseRequest("nan_model", "torch", Precision.FP32, zoo_files=(THIS_FILE,)), timeout_s=300)
    assert r.status == "nonfinite", f"{r.status}: {r.reason}"


WRITER = """
import sys
from harness.core.record import Record
from harness.results import ResultStore
store = ResultStore(sys.argv[1], "killed")
for i in range(100000):
    store.append(Record(run_id="killed", model=f"m{i}", backend="ort", precision="fp32", status="pass",
                        reason="x" * 2000, metrics={"cosine": 1.0}))
    print(i, flush=True)
"""


def test_sigkill_mid_run_leaves_every_written_record_readable(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    acknowledged = -1
    for line in proc.stdout:
        acknowledged = int(line)
        if acknowledged >= 50:
            break
    proc.send_signal(signal.SIGKILL)  # mid-stream: it is appending as fast as it can
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    records = read_records(tmp_path / "killed")
    assert len(records) >= acknowledged + 1  # every acknowledged append is on disk
    assert [r.model for r in records] == [f"m{i}" for i in range(len(records))]  # in order, none torn
    assert all(r.reason == "x" * 2000 and r.metrics == {"cosine": 1.0} for r in records)


@needs_ort
def test_cli_measures_in_a_child_and_prints_the_record(capsys, monkeypatch):
    # `harness run` starts a child for its one case; here an earlier test's idle child would be reused
    # (its import_s is 0): a fresh child per case, as in the CLI's own process
    monkeypatch.setenv("HARNESS_WORKER_CASES", "1")
    code = run_one_cli("resnet_tiny", "ort", "fp32", json_out=True, measure=True, timeout_s=300)
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["status"] == "pass"
    assert {"p50_ms", "p90_ms", "p99_ms", "n", "unstable", "threads", "batch"} <= set(out["latency"])
    assert out["latency"]["threads"] == out["settings"]["threads"]
    assert out["latency"]["n"] >= 10
    assert out["peak_rss_mb"] > 0
    memory = out["extra"]["memory"]["child"]
    assert memory["peak_mb"] - memory["baseline_mb"] == pytest.approx(out["peak_rss_mb"], abs=0.2)
    worker = out["extra"]["worker"]
    assert worker["overhead_s"] > 0
    assert worker["import_s"] > 0 or worker["reused"]  # an earlier test of this process may have left its child
    assert worker["wall_s"] >= out["duration_s"]
    assert [t["batch"] for t in out["throughput"]] == [1, 3]  # 1 and resnet_tiny's declared batch sizes
    assert out["artifact"].endswith(".onnx")
    assert out["artifact_mb"] == pytest.approx(Path(out["artifact"]).stat().st_size / 1e6, abs=1e-3)
    bad = run_one_cli("resnet_tiny", "_fault_nan", "fp32", json_out=False, measure=False, timeout_s=300)
    text = capsys.readouterr().out
    assert bad == 1
    assert text.startswith("resnet_tiny-_fault_nan-fp32: nonfinite")


@needs_ort
def test_parent_never_imports_an_engine_sdk():
    code = ("import sys; from harness.exec.supervisor import run_in_subprocess;"
            "from harness.core.options import CaseRequest;"
            "from harness.core.types import Precision;"
            "r = run_in_subprocess(CaseRequest('resnet_tiny', 'ort', Precision.FP32), timeout_s=300);"
            "print(r.status, sorted(m for m in ('onnxruntime', 'openvino', 'ncnn', 'tensorrt') if m in sys.modules))")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["pass", "[]"], out.stderr[-2000:]
    assert time.perf_counter() - start < 300


# ------------------------------------------------------------------------------- processes a case leaves behind

FORK_ZOO = '''
import os
import subprocess
import sys
import time

import torch
from torch import nn

from model_zoo import TensorSpec, register_model

SLEEPER = "import time; time.sleep(300)"


def fork_sleepers():
    """Start two sleeping processes, one in the caller's process group and one detached (its own session)."""
    mark = os.environ["FORK_MARK"]
    plain = subprocess.Popen([sys.executable, "-c", SLEEPER, mark])
    detached = subprocess.Popen([sys.executable, "-c", SLEEPER, mark], start_new_session=True)
    with open(os.environ["FORK_PIDS"], "a") as f:
        f.write(f"{plain.pid}\\n{detached.pid}\\n")


class Forky(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        fork_sleepers()
        hang_at = os.environ.get("FORK_HANG_AT")
        if hang_at == "forward" or (hang_at == "export" and torch.onnx.is_in_onnx_export()):
            time.sleep(600)
        return self.lin(x)


@register_model(inputs=[TensorSpec("x", (1, 4))], tags={"forky"})
def forky() -> nn.Module:
    return Forky()
'''


@pytest.fixture
def fork_zoo(tmp_path, monkeypatch):
    """A zoo file whose model's forward starts sleeping processes (marked with a unique argument)."""
    zoo = tmp_path / "fork_zoo.py"
    zoo.write_text(FORK_ZOO)
    mark, pids = f"harness-fork-test-{os.getpid()}-{tmp_path.name}", tmp_path / "pids.txt"
    monkeypatch.setenv("FORK_MARK", mark)
    monkeypatch.setenv("FORK_PIDS", str(pids))
    return {"zoo": zoo, "mark": mark, "pids": pids}


def left_behind(fork_zoo) -> list[str]:
    """The sleepers the model started that still run (zombies are not running: they only wait for reaping)."""
    started = [int(x) for x in fork_zoo["pids"].read_text().split()] if fork_zoo["pids"].exists() else []
    assert started, "the model never started its processes: this test would prove nothing"
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if fork_zoo["mark"] in (proc.info["cmdline"] or []) and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(f"{proc.info['pid']}: {' '.join(proc.info['cmdline'])}")
            proc.kill()  # do not leave them to the next test either
    return found


def test_processes_a_forward_forks_do_not_outlive_harness_run_or_a_pytest_session(fork_zoo, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    run = subprocess.run([sys.executable, "-m", "harness.cli", "run", "forky", "--backend", "torch", "--json",
                          "--no-measure", "--zoo-file", str(fork_zoo["zoo"])], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    worker = json.loads(run.stdout)["extra"]["worker"]
    assert len(worker["killed_leftovers"]) >= 2, worker  # the child ended them itself, after the case
    assert left_behind(fork_zoo) == []

    fork_zoo["pids"].unlink()
    session = subprocess.run([sys.executable, "-m", "pytest", "suites/test_conformance.py", "-p", "no:cacheprovider",
                              "-q", "--zoo-file", str(fork_zoo["zoo"]), "--model", "forky", "--backend", "torch",
                              "--results-dir", str(tmp_path / "results"), "--no-report"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert session.returncode == 0, session.stdout[-3000:]
    assert "3 passed" in session.stdout, session.stdout[-3000:]
    assert left_behind(fork_zoo) == []


def test_a_timed_out_case_takes_every_process_it_started_with_it(fork_zoo, monkeypatch):
    """Killed mid-case, the child cannot clean up: the supervisor kills its group and the detached process too."""
    monkeypatch.setenv("FORK_HANG_AT", "forward")
    case = CaseRequest("forky", "torch", Precision.FP32, zoo_files=(str(fork_zoo["zoo"]),))
    r = run_in_subprocess(case, timeout_s=CASE_TIMEOUT_S)
    assert r.status == "timeout", r.reason
    assert left_behind(fork_zoo) == []


@needs_ort
def test_a_build_killed_midway_leaves_no_build_directory(fork_zoo, monkeypatch, tmp_path):
    """The case hangs inside the ONNX export (an artifact build): after the kill no ``.build-*`` remains."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    monkeypatch.setenv("FORK_HANG_AT", "export")
    case = CaseRequest("forky", "ort", Precision.FP32, zoo_files=(str(fork_zoo["zoo"]),))
    r = run_in_subprocess(case, timeout_s=CASE_TIMEOUT_S)
    assert r.status == "timeout", r.reason
    # it really was killed inside the ONNX export's build (the stack dump's tail shows the export call in the
    # harness and torch.onnx), not in an earlier phase: else this test would prove nothing
    assert "torch/onnx/" in r.reason, r.reason
    assert "harness/model/export.py" in r.reason, r.reason
    assert list(cache.rglob("model-*.onnx.lock")), "the ONNX export's build never started"
    assert sorted(cache.rglob(".build-*")) == []
    assert left_behind(fork_zoo) == []


HOLD_LOCK = textwrap.dedent("""
    import fcntl, sys, time
    f = open(sys.argv[1], "a")
    fcntl.flock(f, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(300)
""")


def test_stale_build_directories_go_live_ones_stay(tmp_path):
    from harness.exec.child import remove_stale_builds

    live, stale = tmp_path / "artifacts" / "m-live", tmp_path / "artifacts" / "m-stale"
    for d in (live, stale):
        (d / ".build-abc").mkdir(parents=True)
        (d / ".build-abc" / "model.onnx").write_bytes(b"half")
        (d / "model.onnx.lock").touch()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(live / "model.onnx.lock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        removed = remove_stale_builds(tmp_path)
        assert removed == [stale / ".build-abc"]
        assert (live / ".build-abc").is_dir(), "a build whose builder holds its lock was deleted"
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert remove_stale_builds(tmp_path) == [live / ".build-abc"]  # its builder is gone now


def test_engine_telemetry_is_off_in_the_harness_processes():
    """openvino_telemetry forks a sender per event (one hung in a futex for minutes): it must not be importable."""
    code = ("import sys; from harness import backends; backends.names();"
            "print(repr(sys.modules.get('openvino_telemetry', 'absent')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "None", out.stderr[-2000:]


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None or importlib.util.find_spec("onnx") is None,
                    reason="ov: openvino/onnx not installed (pip install -e '.[openvino]')")
def test_an_openvino_conversion_sends_no_telemetry(tmp_path, monkeypatch):
    """With no consent file, openvino.convert_model would send (forking) and write ~/intel/openvino_ga_cid."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))  # a fresh cache: the IR is really converted
    r = run_in_subprocess(CaseRequest("resnet_tiny", "ov", Precision.FP32), timeout_s=300)
    assert r.status == "pass", r.reason
    assert r.settings["ir_built"], "nothing was converted: this test would prove nothing"
    assert not (tmp_path / "home" / "intel").exists(), sorted(p.name for p in (tmp_path / "home" / "intel").iterdir())
    assert "killed_leftovers" not in r.extra["worker"]
