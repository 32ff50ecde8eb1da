"""``import harness`` and ``import model_zoo`` work with no engine installed.

The child interpreter gets a site directory that links every installed
package except the engines, so the engines are really absent (not mocked).
"""

from __future__ import annotations

import os
import re
import site
import subprocess
import sys
from pathlib import Path

import pytest

ENGINE_PREFIXES = ("onnx", "openvino", "ncnn", "pnnx", "tensorrt", "nncf", "polygraphy", "pycuda", "cuda")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def engineless_python(tmp_path_factory):
    """(python, env) running with site-packages minus every engine package."""
    filtered = tmp_path_factory.mktemp("site-no-engines")
    for sp in map(Path, site.getsitepackages()):
        for entry in sp.iterdir():
            if entry.name.lower().startswith(ENGINE_PREFIXES) or entry.suffix == ".pth":
                continue
            target = filtered / entry.name
            if not target.exists():
                target.symlink_to(entry)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{filtered}", "PYTHONNOUSERSITE": "1"}
    return [sys.executable, "-S"], env


def _run(engineless_python, code: str) -> subprocess.CompletedProcess[str]:
    cmd, env = engineless_python
    return subprocess.run([*cmd, "-c", code], capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)


def test_engines_really_are_absent(engineless_python):
    proc = _run(engineless_python, "import importlib.util as u; print([u.find_spec(m) for m in "
                                   "('onnxruntime', 'openvino', 'ncnn', 'onnx')])")
    assert proc.stdout.strip() == "[None, None, None, None]", proc.stderr


def test_import_harness_and_every_module_without_engines(engineless_python):
    code = """
import importlib, pkgutil, harness, model_zoo, harness.backends
for mod in pkgutil.walk_packages(harness.__path__, 'harness.'):
    importlib.import_module(mod.name)
from harness import backends
print(sorted(backends.names(include_hidden=True)))
print(model_zoo.list_models('resnet*'))
"""
    proc = _run(engineless_python, code)
    assert proc.returncode == 0, proc.stderr
    assert "'ort'" in proc.stdout
    assert "resnet18" in proc.stdout


def test_missing_engines_give_precise_skip_reasons(engineless_python):
    code = """
from harness import backends
for n in backends.names():
    print(n, '|', backends.get(n)().unavailable_reason())
"""
    proc = _run(engineless_python, code)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" | ") for line in proc.stdout.strip().splitlines())
    assert lines["torch"] == "None"
    for name in ("ort", "ov", "ncnn", "trt"):
        if name in lines:
            assert lines[name].startswith(f"{name}: "), lines[name]
            assert "not installed" in lines[name], lines[name]


def test_every_test_module_collects_without_engines(engineless_python, tmp_path):
    """The promise of ``tox -e unit``: with no engine installed, collecting the harness's tests raises no error
    (a module that needs an engine importorskips it with a reason and is reported as skipped)."""
    cmd, env = engineless_python
    env = {k: v for k, v in env.items() if not k.startswith("PYTEST_")}  # an outer xdist worker's id
    proc = subprocess.run([*cmd, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests",
                           "--results-dir", str(tmp_path)], capture_output=True, text=True, timeout=600, env=env,
                          cwd=ROOT)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+(/\d+)? tests collected( \(\d+ deselected\))? in [\d.]+s", summary), text[-3000:]
