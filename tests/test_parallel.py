"""Parallel runs: pytest-xdist workers write one run's records without loss or corruption.

The ci conformance subset on ORT fp32 runs twice, serially and with ``-n 2``; the parallel run must
hold exactly the serial run's (model, backend, precision, status) records, in one run directory,
every line whole. Timing suites refuse xdist. Sharding (--shard) is tested in test_ci_config.py.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.core.record import Record
from harness.results import ResultStore, read_records

ROOT = Path(__file__).resolve().parents[1]
MISSING = [m for m in ("onnxruntime", "xdist") if importlib.util.find_spec(m) is None]
needs_ort_and_xdist = pytest.mark.skipif(bool(MISSING), reason=f"{' and '.join(MISSING)} not installed "
                                                               "(pip install -e '.[ort,dev]')")


def child_env(**extra: str) -> dict[str, str]:
    """This environment minus PYTEST_* (an outer xdist worker's PYTEST_XDIST_WORKER must not leak into the child)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}, **extra}


CI_ORT = ["-p", "no:cacheprovider", "--tag", "ci", "--backend", "ort", "--precision", "fp32", "--in-process",
          "--no-report"]


def pytest_run(args: list[str], results: Path) -> dict[str, Any]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", *args, "--results-dir", str(results)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env=child_env())
    seconds = time.perf_counter() - start
    runs = sorted(p for p in results.iterdir() if p.is_dir()) if results.exists() else []
    return {"proc": proc, "runs": runs, "seconds": round(seconds, 1)}


PERF = ROOT / "suites" / "test_perf.py"


@pytest.fixture(scope="module")
def serial_and_parallel(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The ci subset serially, then with -n 2 (plus the perf suite, which must refuse to time under xdist)."""
    tmp = tmp_path_factory.mktemp("parallel")
    serial = pytest_run(["suites/test_conformance.py", *CI_ORT, "-q"], tmp / "serial")
    perf = ["suites/test_perf.py"] if PERF.exists() else []
    parallel = pytest_run(["suites/test_conformance.py", *perf, *CI_ORT, "-n", "2", "-v", "-rE"], tmp / "parallel")
    for name, run in (("serial", serial), ("parallel", parallel)):
        assert run["proc"].returncode in (0, 1), f"{name}: {run['proc'].stdout[-3000:]}{run['proc'].stderr[-3000:]}"
    print(f"ci conformance subset on ort fp32: serial {serial['seconds']} s, -n 2 {parallel['seconds']} s")
    return {"serial": serial, "parallel": parallel}


def outcomes(records: list[Record]) -> set[tuple[str, str, str, str]]:
    return {(r.model, r.backend, r.precision, r.status) for r in records}


@needs_ort_and_xdist
@pytest.mark.slow  # runs the ci subset twice (serially, then with -n 2)
def test_workers_append_to_one_run_without_loss_or_corruption(serial_and_parallel):
    parallel = serial_and_parallel["parallel"]
    (run_dir,) = parallel["runs"]  # one run id for the whole session, across workers
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    parsed = [json.loads(line) for line in lines]  # a torn or interleaved line would not parse
    assert {d["run_id"] for d in parsed} == {run_dir.name}
    ids = [d["test_id"] for d in parsed]
    assert len(ids) == len(set(ids)), "a case was recorded twice"
    collected = re.findall(r"\[gw\d\] \[\s*\d+%\] (?!ERROR)\w+ suites/test_conformance\.py::test_conformance"
                           r"\[([^\]]+)\]", parallel["proc"].stdout)
    assert sorted(ids) == sorted(collected), "every case that ran has exactly one record"


@needs_ort_and_xdist
@pytest.mark.slow
def test_parallel_records_equal_the_serial_run(serial_and_parallel):
    (serial_dir,) = serial_and_parallel["serial"]["runs"]
    (parallel_dir,) = serial_and_parallel["parallel"]["runs"]
    serial, parallel = read_records(serial_dir), read_records(parallel_dir)
    assert {r.suite for r in parallel} == {"conformance"}
    assert len(serial) >= 5
    assert outcomes(parallel) == outcomes(serial)
    assert len(parallel) == len(serial)


@needs_ort_and_xdist
@pytest.mark.slow
def test_both_workers_ran_cases(serial_and_parallel):
    out = serial_and_parallel["parallel"]["proc"].stdout
    for worker in ("gw0", "gw1"):
        assert re.search(rf"\[{worker}\] \[\s*\d+%\] (PASSED|FAILED|XFAIL|SKIPPED)", out), f"{worker} ran no case"


@needs_ort_and_xdist
@pytest.mark.slow
def test_parallel_run_has_run_info_and_summary(serial_and_parallel):
    """Under xdist the controller collects no items: run.json and the summary must not depend on that."""
    parallel = serial_and_parallel["parallel"]
    (run_dir,) = parallel["runs"]
    info_path = run_dir / "run.json"
    assert info_path.exists(), f"xdist run {run_dir.name} has records but no run.json (machine fingerprint)"
    info = json.loads(info_path.read_text())
    assert info["run_id"] == run_dir.name
    assert "machine" in info
    assert "finished_at" in info
    assert f"records: {run_dir / 'records.jsonl'}" in parallel["proc"].stdout, "no harness summary under xdist"


@needs_ort_and_xdist
@pytest.mark.slow
def test_perf_suite_refuses_xdist(serial_and_parallel):
    if not PERF.exists():
        pytest.skip("suites/test_perf.py is not written yet")
    out = serial_and_parallel["parallel"]["proc"].stdout
    perf_lines = re.findall(r"\[gw\d\] \[\s*\d+%\] (\w+) suites/test_perf\.py::", out)
    assert set(perf_lines) == {"ERROR"}, f"perf cases under xdist ended as {set(perf_lines)}"
    assert "cannot share the CPU" in out, out[-3000:]
    assert "pytest-xdist" in out, out[-3000:]
    (run_dir,) = serial_and_parallel["parallel"]["runs"]
    assert not [r for r in read_records(run_dir) if r.suite == "perf" or r.latency], "a latency was measured"


def _append_many(results: str, writer: int, count: int, payload_kb: int) -> None:
    store = ResultStore(results, "shared")
    for i in range(count):
        blob = f"{writer}-{i}:" * (payload_kb * 1024 // 8)
        store.append(Record(run_id="shared", model=f"w{writer}-{i}", backend="ort", precision="fp32",
                            status="pass", reason=blob))


def test_large_records_from_concurrent_writers_stay_whole(tmp_path):
    """Lines far beyond one page (64 KiB) from 3 processes at once: each line is one record, intact."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w, 12, 64)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    lines = (tmp_path / "shared" / "records.jsonl").read_text().splitlines()
    assert len(lines) == 36
    for line in lines:
        rec = Record.from_dict(json.loads(line))
        writer, i = rec.model[1:].split("-")
        assert set(rec.reason.split(":")[:-1]) == {f"{writer}-{i}"}, f"record {rec.model} holds another's bytes"
