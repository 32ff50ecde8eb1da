"""Bad input and faults: each ends in a clear error or a recorded status, never a silent pass.

Usage errors and zoo-file errors are driven through the real plugin in one child pytest process
(several ``pytest.main`` calls); engine faults run real ORT on tiny models defined below.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from engines import needs_ort

from harness.results import read_records

ROOT = Path(__file__).resolve().parents[1]
SUITE = "suites/test_conformance.py"


def child_env(**extra: str) -> dict[str, str]:
    """This environment minus PYTEST_* (an outer xdist worker's PYTEST_XDIST_WORKER must not leak into the child)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}, **extra}


# Tiny models for the engine faults, written to a --zoo-file so they never join this process's registry.
BAD_ZOO = '''
from __future__ import annotations

import torch
from torch import nn

from model_zoo import TensorSpec, register_model


class _CustomOp(torch.autograd.Function):
    """Exports as custom_domain::MyOp, an op no ONNX engine has a kernel for."""

    @staticmethod
    def forward(ctx, x):
        return x * 2.0

    @staticmethod
    def symbolic(g, x):
        return g.op("custom_domain::MyOp", x)


class CustomOpNet(nn.Module):
    def forward(self, x):
        return _CustomOp.apply(x) + 1.0


class LogOfNegative(nn.Module):
    def forward(self, x):
        return torch.log(-1.0 - x.abs())  # NaN everywhere, in PyTorch and in every engine


@register_model(inputs=[TensorSpec("input", (1, 8))], tags={"badinput-test"})
def badinput_custom_op() -> nn.Module:
    return CustomOpNet()


@register_model(inputs=[TensorSpec("input", (1, 8))], tags={"badinput-test"})
def badinput_log_of_negative() -> nn.Module:
    return LogOfNegative()
'''

RAISING_ZOO = "from model_zoo import TensorSpec, register_model\n\nSIZE = 4\nraise RuntimeError('boom at import')\n"
RAISING_LINE = 4
SYNTAX_ZOO = "from model_zoo import register_model\n\n\ndef broken(:\n    pass\n"
EXITING_ZOO = "import sys\n\nfrom model_zoo import register_model\n\nsys.exit(3)\n"  # a script passed as a zoo file
DUPLICATE_ZOO = '''
from torch import nn

from model_zoo import TensorSpec, register_model


@register_model(inputs=[TensorSpec("input", (1, 3, 32, 32))])
def resnet_tiny() -> nn.Module:
    return nn.Identity()
'''

# One child process, several pytest sessions: each prints its exit code and captured output as JSON.
MULTI = r"""
import contextlib, io, json, sys
import pytest

out = []
for argv in json.loads(sys.argv[1]):
    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        code = pytest.main(argv)
    out.append({"argv": argv, "code": int(code), "stdout": so.getvalue(), "stderr": se.getvalue()})
print("RUNS=" + json.dumps(out))
"""


def pytest_sessions(argvs: list[list[str]], env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Run several pytest sessions (cwd = repository root) in one child process."""
    proc = subprocess.run([sys.executable, "-c", MULTI, json.dumps(argvs)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env=child_env(**(env or {})))
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RUNS=")), None)
    assert line is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(line.removeprefix("RUNS="))


def output(run: dict[str, Any]) -> str:
    return run["stdout"] + run["stderr"]


# ---------------------------------------------------------------------------------------------- usage errors


def _mount_full_tmpfs(where: Path) -> str | None:
    """Mount a 64 KiB tmpfs at ``where`` and fill it; return why not when this machine does not allow it."""
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        return f"cannot mount a tmpfs to fill (needs root with CAP_SYS_ADMIN): {proc.stderr.strip()}"
    try:
        with (where / "filler").open("wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError:
        pass
    return None


@pytest.fixture(scope="module")
def usage_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("usage")
    files = {"raising": RAISING_ZOO, "syntax": SYNTAX_ZOO, "duplicate": DUPLICATE_ZOO, "exiting": EXITING_ZOO}
    for name, text in files.items():
        (tmp / f"{name}_zoo.py").write_text(text)
    (tmp / "a_file").write_text("not a directory")
    full = tmp / "full"
    full_reason = _mount_full_tmpfs(full)
    case = ["--model", "lstm_tiny", "--backend", "torch", "--precision", "fp32", "--in-process", "--no-report"]
    base = [SUITE, "-p", "no:cacheprovider"]
    argvs = {
        "model": [*base, "--collect-only", "--model", "resnet_tinyy"],
        "backend": [*base, "--collect-only", "--backend", "tflite"],
        "precision": [*base, "--collect-only", "--precision", "int4"],
        "zoo_missing": [*base, "--collect-only", "--zoo-file", str(tmp / "nope_zoo.py")],
        "zoo_raising": [*base, "--collect-only", "--zoo-file", str(tmp / "raising_zoo.py")],
        "zoo_syntax": [*base, "--collect-only", "--zoo-file", str(tmp / "syntax_zoo.py")],
        "zoo_duplicate": [*base, "--collect-only", "--zoo-file", str(tmp / "duplicate_zoo.py")],
        "not_a_dir": [*base, *case, "--results-dir", str(tmp / "a_file" / "results")],
        "zoo_exiting": [*base, "--collect-only", "--zoo-file", str(tmp / "exiting_zoo.py")],
        "glob_matches_nothing": [*base, "--collect-only", "--model", "zzz*"],
        "tag_nobody_has": [*base, "--collect-only", "--tag", "cii"],
        "model_without_tag": [*base, "--collect-only", "--model", "resnet18", "--tag", "ci"],
        "threads_negative": [*base, "--collect-only", "--threads", "-1"],
        "threads_zero": [*base, "--collect-only", "--threads", "0"],
        "timeout_zero": [*base, "--collect-only", "--case-timeout", "0"],
        "timeout_nan": [*base, "--collect-only", "--case-timeout", "nan"],
        "timeout_negative": [*base, "--collect-only", "--case-timeout", "-5"],
    }
    if full_reason is None:
        argvs["disk_full"] = [*base, *case, "--results-dir", str(full / "results")]
    try:
        runs = pytest_sessions(list(argvs.values()))
    finally:
        if full_reason is None:
            subprocess.run(["umount", str(full)], check=False)
    return {"tmp": tmp, "runs": dict(zip(argvs, runs, strict=True)), "full_reason": full_reason}


@pytest.mark.parametrize(("key", "expected"), [
    ("model", ["unknown model 'resnet_tinyy'; did you mean resnet_tiny", "Known models: ", "lstm_tiny"]),
    ("backend", ["unknown backend 'tflite'; known backends: torch, ncnn, ort, ov, trt"]),
    ("precision", ["unknown precision 'int4'; known precisions: fp32, fp16, int8"]),
])
def test_unknown_names_are_usage_errors_listing_what_exists(usage_runs, key, expected):
    run = usage_runs["runs"][key]
    assert run["code"] == pytest.ExitCode.USAGE_ERROR, output(run)
    for fragment in expected:
        assert fragment in run["stderr"], run["stderr"]


@pytest.mark.parametrize(("key", "expected"), [
    ("glob_matches_nothing", ["--model 'zzz*' matches nothing in the zoo", "Zoo models: ", "resnet_tiny"]),
    ("tag_nobody_has", ["--tag 'cii': no model of the zoo carries it; known tags: ", "ci"]),
    ("model_without_tag", ["--model resnet18 with --tag ci selects no model"]),
    ("threads_negative", ["--threads -1: expected a positive number of engine threads"]),
    ("threads_zero", ["--threads 0: expected a positive number of engine threads"]),
    ("timeout_zero", ["--case-timeout 0: expected a positive, finite number of seconds"]),
    ("timeout_nan", ["--case-timeout nan: expected a positive, finite number of seconds"]),
    ("timeout_negative", ["--case-timeout -5: expected a positive, finite number of seconds"]),
])
def test_options_that_would_run_nothing_or_disable_a_limit_are_usage_errors(usage_runs, key, expected):
    """A CI typo must not go green by running nothing, and a limit must not become a failure of every case or none."""
    run = usage_runs["runs"][key]
    assert run["code"] == pytest.ExitCode.USAGE_ERROR, output(run)
    for fragment in expected:
        assert fragment in run["stderr"], run["stderr"]
    assert "INTERNALERROR" not in output(run)


def test_zoo_file_calling_sys_exit_is_a_usage_error_naming_it(usage_runs):
    run = usage_runs["runs"]["zoo_exiting"]
    assert run["code"] == pytest.ExitCode.USAGE_ERROR, output(run)
    file = (usage_runs["tmp"] / "exiting_zoo.py").resolve()
    assert f"--zoo-file {file}: importing it called sys.exit(3)" in run["stderr"], output(run)
    assert "INTERNALERROR" not in output(run)


def test_missing_zoo_file_is_named(usage_runs):
    run = usage_runs["runs"]["zoo_missing"]
    assert run["code"] == pytest.ExitCode.USAGE_ERROR
    assert f"--zoo-file {usage_runs['tmp'] / 'nope_zoo.py'}: no such file" in run["stderr"], run["stderr"]


def test_zoo_file_raising_on_import_names_file_and_line(usage_runs):
    run = usage_runs["runs"]["zoo_raising"]
    assert run["code"] == pytest.ExitCode.USAGE_ERROR
    where = f"{(usage_runs['tmp'] / 'raising_zoo.py').resolve()}:{RAISING_LINE}"
    assert f"--zoo-file {where}: importing it raised RuntimeError: boom at import" in run["stderr"], run["stderr"]


def test_zoo_file_with_a_syntax_error_names_file_and_line(usage_runs):
    run = usage_runs["runs"]["zoo_syntax"]
    assert run["code"] == pytest.ExitCode.USAGE_ERROR
    assert "syntax_zoo.py" in run["stderr"], run["stderr"]
    assert "SyntaxError" in run["stderr"], run["stderr"]
    assert "line 4" in run["stderr"] or "syntax_zoo.py:4" in run["stderr"], run["stderr"]


def test_zoo_file_registering_a_taken_name_names_both_places(usage_runs):
    run = usage_runs["runs"]["zoo_duplicate"]
    assert run["code"] == pytest.ExitCode.USAGE_ERROR
    file = (usage_runs["tmp"] / "duplicate_zoo.py").resolve()
    line = DUPLICATE_ZOO.splitlines().index('@register_model(inputs=[TensorSpec("input", (1, 3, 32, 32))])') + 1
    err = run["stderr"]
    assert f"duplicate model name 'resnet_tiny': defined at {file}:{line} and already at " in err, err
    assert f"{ROOT / 'model_zoo'}" in err, "the error must name where the existing model is defined"


def test_results_dir_under_a_file_fails_before_any_case_runs(usage_runs):
    run = usage_runs["runs"]["not_a_dir"]
    text = output(run)
    assert run["code"] == pytest.ExitCode.USAGE_ERROR, text
    assert f"results directory {usage_runs['tmp'] / 'a_file' / 'results'}" in text, text
    assert "Not a directory" in text, text
    assert "--results-dir" in text, text
    assert not re.search(r"\d+ (passed|failed)", text), "a case ran although results could not be written"


@pytest.mark.skipif(importlib.util.find_spec("xdist") is None, reason="pytest-xdist not installed")
def test_results_dir_under_a_file_fails_before_any_worker_runs_a_case(tmp_path):
    """Under -n 2 too: a clear usage error from the controller, not a worker crash (INTERNALERROR)."""
    (tmp_path / "a_file").write_text("not a directory")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", SUITE, "-p", "no:cacheprovider", "-n", "2", "--model", "lstm_tiny",
         "--backend", "torch", "--precision", "fp32", "--in-process", "--no-report",
         "--results-dir", str(tmp_path / "a_file" / "results")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=child_env())
    text = proc.stdout + proc.stderr
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, text[-3000:]
    assert "INTERNALERROR" not in text, text[-3000:]
    assert f"results directory {tmp_path / 'a_file' / 'results'}" in text, text[-3000:]
    assert "Not a directory" in text, text[-3000:]


def test_full_results_filesystem_fails_before_any_case_runs(usage_runs):
    if usage_runs["full_reason"] is not None:
        pytest.skip(usage_runs["full_reason"])
    run = usage_runs["runs"]["disk_full"]
    text = output(run)
    assert run["code"] == pytest.ExitCode.USAGE_ERROR, text
    assert "No space left on device" in text, text
    assert "--results-dir" in text, text
    assert not re.search(r"\d+ (passed|failed)", text), "a case ran although results could not be written"


# ---------------------------------------------------------------------------------------------- CLI usage errors


def _unrunnable_backend() -> str | None:
    from harness import backends

    return next((n for n in backends.names() if backends.get(n)().unavailable_reason() is not None), None)


@pytest.mark.parametrize(("argv", "expected"), [
    (["run", "resnet_tinyy", "--backend", "torch"], "unknown model 'resnet_tinyy'; did you mean resnet_tiny"),
    (["run", "resnet_tiny", "--backend", "tflite"], "unknown backend 'tflite'; known backends: "),
    (["run", "resnet_tiny", "--backend", "UNRUNNABLE"], "cannot run here: "),
    (["run", "resnet_tiny", "--backend", "torch", "--precision", "int4"], "unknown precision 'int4'"),
    (["run", "resnet_tiny", "--backend", "torch", "--threads", "-1"], "--threads -1: expected a positive number"),
    (["run", "resnet_tiny", "--backend", "torch", "--timeout", "0"], "--timeout 0: expected a positive, finite"),
    (["run", "resnet_tiny", "--backend", "torch", "--timeout", "nan"], "--timeout nan: expected a positive, finite"),
    (["run", "x", "--backend", "torch", "--zoo-file", "EXITING"], "exiting_zoo.py: importing it called sys.exit(3)"),
    (["run", "x", "--backend", "torch", "--zoo-file", "nope_zoo.py"], "--zoo-file nope_zoo.py: no such file"),
    (["models", "zzz*"], "pattern 'zzz*' matches nothing in the zoo. Zoo models: "),
    (["models", "--tag", "cii"], "--tag 'cii': no model of the zoo carries it"),
    (["models", "--timeout", "0"], "--timeout 0: expected a positive, finite"),
])
def test_cli_usage_errors_exit_2_with_a_message_before_any_case(argv, expected, tmp_path, capsys, monkeypatch):
    """Exit 2 with what was wrong, never 1 (a failed case) nor 0, and no case is started."""
    from harness import cli

    if "UNRUNNABLE" in argv:
        backend = _unrunnable_backend()
        if backend is None:
            pytest.skip("every backend can run on this machine: none to request as unrunnable")
        argv = [backend if a == "UNRUNNABLE" else a for a in argv]
    if "EXITING" in argv:
        (tmp_path / "exiting_zoo.py").write_text(EXITING_ZOO)
        argv = [str(tmp_path / "exiting_zoo.py") if a == "EXITING" else a for a in argv]
    monkeypatch.setattr(cli, "run_in_subprocess", lambda *a, **k: pytest.fail("a case was started"))
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"harness {argv[0]}: error: " in err
    assert expected in err, err


def test_cli_argument_errors_exit_2(capsys):
    from harness.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["run", "resnet_tiny"])  # --backend is required
    assert exc.value.code == 2
    assert "--backend" in capsys.readouterr().err


HANGING_ZOO = """
import os
import subprocess
import sys
import time

from torch import nn

from model_zoo import TensorSpec, register_model


class Hangs(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", os.environ["HANG_MARK"]])
        time.sleep(600)
        return self.lin(x)


@register_model(inputs=[TensorSpec("x", (1, 4))], tags={"hangs"})
def user_hangs() -> nn.Module:
    return Hangs()
"""


def test_models_listing_counts_user_models_in_a_child_with_a_limit(tmp_path):
    """A user's forward that hangs (and forks) costs the listing its time limit, not the listing itself."""
    import time

    import psutil

    zoo = tmp_path / "hanging_zoo.py"
    zoo.write_text(HANGING_ZOO)
    mark = f"harness-models-hang-{tmp_path.name}"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "models", "user_hangs", "resnet_tiny", "--json",
                           "--zoo-file", str(zoo), "--timeout", "10"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=child_env(HANG_MARK=mark))
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["user_hangs"]["flops"] is None
    assert "not counted: building and running it took longer than 10 s" in rows["user_hangs"]["note"]
    assert rows["resnet_tiny"]["flops"] > 0  # built-in models are still counted
    assert elapsed < 120, f"the listing took {elapsed:.0f} s"
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if mark in (p.info["cmdline"] or [])]
    for pid in left:
        psutil.Process(pid).kill()
    assert left == [], "the hanging model's fork outlived the listing"


# ---------------------------------------------------------------------------------------------- engine faults


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("faults")
    zoo = tmp / "bad_zoo.py"
    zoo.write_text(BAD_ZOO)
    results = tmp / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", SUITE, "-p", "no:cacheprovider", "-rA", "--zoo-file", str(zoo),
         "--model", "badinput_*", "--model", "lstm_tiny", "--backend", "ort", "--precision", "fp32",
         "--in-process", "--no-report", "--results-dir", str(results)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=child_env())
    runs = list(results.iterdir()) if results.exists() else []
    assert len(runs) == 1, f"expected one run directory, got {runs}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    run_dir = runs[0]
    return {"proc": proc, "records": {r.model: r for r in read_records(run_dir)}}


@needs_ort
def test_engine_rejecting_an_op_is_unsupported_with_its_message_and_the_run_goes_on(fault_run):
    """An op the engine does not implement ("is not a registered function/op") is ``unsupported``, charged to
    the engine, with the engine's own message; the session carries on."""
    proc, records = fault_run["proc"], fault_run["records"]
    rec = records["badinput_custom_op"]
    assert (rec.status, rec.cause) == ("unsupported", "engine"), (rec.status, rec.reason)
    assert "onnxruntime could not load" in rec.reason, rec.reason
    assert "custom_domain:MyOp" in rec.reason, "the engine's own message must be kept"
    # cases after the failing one still ran (models run in name order: badinput_* first)
    assert records["lstm_tiny"].status == "pass", records["lstm_tiny"].reason
    assert "PASSED suites/test_conformance.py::test_conformance[lstm_tiny-ort-fp32]" in proc.stdout
    assert "SKIPPED" in proc.stdout
    assert "custom_domain:MyOp" in proc.stdout
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED  # the NaN model's case fails the session


@needs_ort
def test_nan_outputs_are_nonfinite_never_a_pass(fault_run):
    proc, records = fault_run["proc"], fault_run["records"]
    rec = records["badinput_log_of_negative"]
    assert rec.status == "nonfinite", (rec.status, rec.reason, rec.metrics)
    assert rec.metrics["nonfinite"] > 0
    assert "FAILED suites/test_conformance.py::test_conformance[badinput_log_of_negative-ort-fp32]" in proc.stdout


@needs_ort
def test_truncated_cached_onnx_is_detected_and_rebuilt(tmp_path, monkeypatch):
    from harness.core.cache import sha256_file
    from harness.core.options import CaseRequest
    from harness.core.types import Precision
    from harness.run.case import run_case

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    request = CaseRequest("lstm_tiny", "ort", Precision.FP32)
    first = run_case(request)
    assert first.status == "pass", first.reason
    (onnx_file,) = tmp_path.glob("artifacts/lstm_tiny-*/model-*.onnx")
    good = onnx_file.read_bytes()
    onnx_file.write_bytes(good[: len(good) // 2])

    with pytest.warns(RuntimeWarning, match="failed its hash check; rebuilding"):
        second = run_case(request)
    assert second.status == "pass", second.reason
    assert second.export["cached"] is False, "the truncated file was used instead of rebuilt"
    sidecar = onnx_file.with_name(onnx_file.name + ".sha256")
    assert sha256_file(onnx_file) == sidecar.read_text().strip()
    assert onnx_file.stat().st_size > len(good) // 2


def test_cache_rejects_a_same_size_corruption(tmp_path):
    """The check is a content hash, not a size check: one flipped byte is caught too."""
    from harness.core.cache import cached

    builds = []

    def build(path: Path) -> None:
        builds.append(path)
        path.write_bytes(b"weights" * 1000)

    target = tmp_path / "artifact.bin"
    cached(target, build)
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="failed its hash check"):
        cached(target, build)
    assert len(builds) == 2
    assert target.read_bytes() == b"weights" * 1000
    cached(target, build)
    assert len(builds) == 2, "a verified copy must be reused, not rebuilt"


# ---------------------------------------------------------------------------------------------- pickles


def unsafe_loads(source: str, filename: str = "<src>") -> list[str]:
    """``torch.load`` calls without ``weights_only=True`` and ``np.load(allow_pickle=True)`` calls."""
    problems = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        kwargs = {k.arg: k.value for k in node.keywords}
        if owner == "torch" and name == "load":
            flag = kwargs.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                problems.append(f"{filename}:{node.lineno}: torch.load without weights_only=True")
        if owner in ("np", "numpy") and name == "load" and "allow_pickle" in kwargs:
            flag = kwargs["allow_pickle"]
            if not (isinstance(flag, ast.Constant) and flag.value is False):
                problems.append(f"{filename}:{node.lineno}: np.load with allow_pickle")
    return problems


def test_the_pickle_check_catches_unsafe_loads():
    bad = textwrap.dedent("""
        import torch, numpy as np
        torch.load("w.pt")
        torch.load("w.pt", weights_only=False)
        torch.load("w.pt", map_location="cpu", weights_only=flag)
        np.load("a.npz", allow_pickle=True)
    """)
    good = 'import torch, numpy as np\ntorch.load("w.pt", map_location="cpu", weights_only=True)\nnp.load("a.npy")\n'
    assert len(unsafe_loads(bad)) == 4
    assert unsafe_loads(good) == []


def test_weights_are_never_unpickled_unsafely():
    files = sorted([*(ROOT / "harness").rglob("*.py"), *(ROOT / "model_zoo").rglob("*.py")])
    assert len(files) > 10
    problems = [p for f in files for p in unsafe_loads(f.read_text(), str(f.relative_to(ROOT)))]
    assert problems == []


def test_cache_sidecar_is_sha256_of_the_bytes(tmp_path):
    from harness.core.cache import cached

    target = cached(tmp_path / "x.onnx", lambda p: p.write_bytes(b"abc"))
    assert target.with_name("x.onnx.sha256").read_text().strip() == hashlib.sha256(b"abc").hexdigest()
