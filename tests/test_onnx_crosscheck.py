"""Cross-check: the harness's ONNX Runtime verdicts against ONNX's own backend test runner.

ONNX ships a runner for its backend test cases (``onnx.backend.test.BackendTest``, a
``unittest`` suite over any ``onnx.backend.base.Backend``); ONNX Runtime ships such a
backend (``onnxruntime.backend``). Both judge the same engine on the same files with
ONNX's tolerances, so where they disagree one of them is wrong. This test runs both and
asserts agreement case by case, except the reasoned policy differences committed in
``harness.model.onnx_files.CROSSCHECK_POLICY``.

A harness verdict counts as a pass when its status is passing; ``unsupported`` and
``skipped`` are compared with the runner's skips (a runner skip is ONNX Runtime refusing
the opset through its backend). Everything else is a failure. The default selection
(``SUBSET``, ~40 cases) runs in every test run; the full set (~2,000 cases, minutes)
is marked ``slow``.
"""

from __future__ import annotations

import os
import re
import time
import unittest
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("onnx", reason="crosscheck: Python package 'onnx' not installed (pip install -e '.[ort]')")
pytest.importorskip("onnxruntime", reason="crosscheck: Python package 'onnxruntime' not installed")

CATEGORY_SETS = {"NodeModel": "node", "RealModel": "light", "SimpleModel": "simple",
                 "PyTorchConvertedModel": "pytorch-converted", "PyTorchOperatorModel": "pytorch-operator"}
"""ONNX runner test class ``OnnxBackend<category>Test`` -> the harness's case set."""


@dataclass(frozen=True)
class PeerResult:
    """ONNX's runner on one case: ``pass``, ``fail`` (assertion), ``error`` (exception) or ``skip``."""

    outcome: str
    message: str = ""


class _Collect(unittest.TestResult):
    def __init__(self) -> None:
        super().__init__()
        self.results: dict[str, PeerResult] = {}

    @staticmethod
    def _id(test: unittest.TestCase) -> str | None:
        category = re.fullmatch(r"OnnxBackend(\w+)Test", type(test).__name__)
        name = test._testMethodName
        if category is None or category[1] not in CATEGORY_SETS or not name.endswith("_cpu"):
            return None
        return f"{CATEGORY_SETS[category[1]]}-{name.removesuffix('_cpu')}"

    def _put(self, test: unittest.TestCase, outcome: str, message: str = "") -> None:
        if (case_id := self._id(test)) is not None:
            self.results[case_id] = PeerResult(outcome, message[-600:])

    def addSuccess(self, test):
        self._put(test, "pass")

    def addFailure(self, test, err):
        self._put(test, "fail", self._exc_info_to_string(err, test))

    def addError(self, test, err):
        self._put(test, "error", self._exc_info_to_string(err, test))

    def addSkip(self, test, reason):
        self._put(test, "skip", reason)


def onnx_runner_results(case_ids: list[str] | None = None, onnx_home: Path | None = None) -> dict[str, PeerResult]:
    """Run ONNX's ``BackendTest`` over ``onnxruntime.backend`` (CPU) on ``case_ids`` (None: all); id -> result.

    ``onnx_home`` is where the runner writes the light models' dummy data sets (``ONNX_HOME``).
    """
    import warnings

    import onnx.backend.test
    import onnxruntime.backend

    if onnx_home is not None:
        os.environ["ONNX_HOME"] = str(onnx_home)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the node generators overflow/divide by zero on purpose
        bt = onnx.backend.test.BackendTest(onnxruntime.backend, __name__)
    if case_ids is not None:
        names = sorted({i.split("-test_", 1)[1] for i in case_ids})
        bt.include(r"^test_(" + "|".join(re.escape(n) for n in names) + r")_cpu$")
    collect = _Collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for test in _flatten(bt.test_suite):
            if _Collect._id(test) is not None and (case_ids is None or _Collect._id(test) in case_ids):
                test.run(collect)
    return collect.results


def _flatten(suite: unittest.TestSuite) -> list[unittest.TestCase]:
    out: list[unittest.TestCase] = []
    for t in suite:
        out += _flatten(t) if isinstance(t, unittest.TestSuite) else [t]
    return out


if __name__ == "__main__":  # python tests/test_onnx_crosscheck.py OUT.json: the runner alone, timed
    import json
    import sys
    import tempfile

    start = time.perf_counter()
    res = onnx_runner_results(onnx_home=Path(tempfile.mkdtemp(prefix="onnx-home-")))
    wall = time.perf_counter() - start
    Path(sys.argv[1]).write_text(json.dumps({"wall_s": wall, "results": {k: [v.outcome, v.message]
                                                                        for k, v in res.items()}}, indent=0))
    print(f"{len(res)} cases in {wall:.1f} s:", Counter(v.outcome for v in res.values()))
