"""Cross-check: the harness's ONNX Runtime verdicts against ONNX's own backend test runner.

ONNX ships a runner for its backend test cases (``onnx.backend.test.BackendTest``, a
``unittest`` suite over any ``onnx.backend.base.Backend``); ONNX Runtime ships such a
backend (``onnxruntime.backend``). Both judge the same engine on the same files with
ONNX's tolerances, so where they disagree one of them is wrong. This test runs both and
asserts agreement case by case, except the reasoned policy differences committed in
``tests/data/onnx_crosscheck_policy.json`` (case-id pattern -> why the harness rules otherwise).

Agreement is on the one thing both decide: did the engine's outputs match the expected
ones. A harness verdict is a pass when its status is passing (pass, fallback, xpass), the
runner's when its test passed; every other outcome on either side (failure, error, skip,
unsupported) is a non-pass. The default selection
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
from fnmatch import fnmatchcase
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
    import onnxruntime
    import onnxruntime.backend

    onnxruntime.set_default_logger_severity(3)  # ORT's warnings per model, as the harness's sessions set it
    before = os.environ.get("ONNX_HOME")
    if onnx_home is not None:
        os.environ["ONNX_HOME"] = str(onnx_home)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the node generators overflow/divide by zero on purpose
            bt = onnx.backend.test.BackendTest(onnxruntime.backend, __name__)
            if case_ids is not None:
                names = sorted({i.split("-test_", 1)[1] for i in case_ids})
                bt.include(r"^test_(" + "|".join(re.escape(n) for n in names) + r")_cpu$")
            collect = _Collect()
            for test in _flatten(bt.test_suite):
                if _Collect._id(test) is not None and (case_ids is None or _Collect._id(test) in case_ids):
                    test.run(collect)
    finally:  # the environment is part of the supervisor's child key: leave it as found
        if before is None:
            os.environ.pop("ONNX_HOME", None)
        else:
            os.environ["ONNX_HOME"] = before
    return collect.results


def _flatten(suite: unittest.TestSuite) -> list[unittest.TestCase]:
    out: list[unittest.TestCase] = []
    for t in suite:
        out += _flatten(t) if isinstance(t, unittest.TestSuite) else [t]
    return out


SUBSET = (
    # the cases the cross-check first found wrong: infinities, NaN by spec, sequences/optionals, run-time errors
    "node-test_attention_4d_with_past_and_present_qk_matmul_bias_3d_mask_causal",
    "node-test_attention_4d_with_past_and_present_qk_matmul_bias_4d_mask_causal",
    "node-test_cast_FLOAT_to_DOUBLE", "node-test_mod_float_edge_cases_fmod_0_float32",
    "pytorch-operator-test_operator_sqrt", "node-test_identity_sequence", "node-test_if_opt", "node-test_identity_opt",
    "node-test_split_to_sequence_1", "node-test_sequence_map_add_2_sequences", "node-test_loop13_seq",
    "node-test_loop16_seq_none", "node-test_attention_4d_diff_heads_mask4d_padded_kv",
    "node-test_reduce_max_empty_set_bool", "node-test_optional_has_element_empty_optional_input",
    "node-test_cast_FLOAT_to_BFLOAT16", "node-test_cast_FLOAT_to_FLOAT8E4M3FN", "node-test_cast_FLOAT_to_INT4",
    "node-test_dft", "node-test_stft",
    # scalar inputs, quantization and common operators
    "node-test_cumsum_1d", "node-test_dequantizelinear", "node-test_quantizelinear",
    "node-test_range_float_type_positive_delta", "node-test_abs", "node-test_conv_with_strides_padding",
    "node-test_lstm_defaults", "node-test_gemm_default_no_bias", "node-test_softmax_axis_1",
    "node-test_resize_downsample_scales_linear", "node-test_top_k", "node-test_nonzero_example",
    "node-test_einsum_batch_matmul", "node-test_layer_normalization_2d_axis0", "node-test_gelu_default_1",
    "node-test_maxpool_2d_pads", "node-test_gather_0", "node-test_scan_sum", "pytorch-converted-test_Conv2d",
    "simple-test_single_relu_model", "light-test_squeezenet",
)
"""The default selection (~40 cases, seconds)."""

POLICY_FILE = Path(__file__).parent / "data" / "onnx_crosscheck_policy.json"


def policy() -> dict[str, dict[str, str]]:
    """Case-id pattern -> ``reason`` why the harness's verdict differs from ONNX's runner on purpose, and
    optionally ``when_runner_says``: a regex the runner's message must match for the entry to apply."""
    import json

    return json.loads(POLICY_FILE.read_text())


def _explained(case_id: str, runner_message: str, rules: dict[str, dict[str, str]]) -> str | None:
    for pattern, rule in rules.items():
        when = rule.get("when_runner_says")
        if fnmatchcase(case_id, pattern) and (when is None or re.search(when, runner_message)):
            return pattern
    return None


def harness_results(case_ids: list[str]) -> dict[str, object]:
    """The harness's ORT fp32 record of each ``onnx:<id>`` (in this process: the case loop, not the supervisor)."""
    from harness.core.options import CaseRequest
    from harness.core.types import Precision
    from harness.model.onnx_files import SUITE
    from harness.run.case import run_case

    return {i: run_case(CaseRequest(f"onnx:{i}", "ort", Precision.FP32, suite=SUITE)) for i in case_ids}


def crosscheck(case_ids: list[str] | None, tmp: Path) -> tuple[Counter, list[str], set[str]]:
    """Run both; (harness status x runner outcome counts, unexplained disagreements, policy patterns used)."""
    from harness.core.types import PASSING
    from harness.model.onnx_files import discover

    peer = onnx_runner_results(case_ids, onnx_home=tmp)
    ids = case_ids or [c.id for c in discover()]
    assert set(ids) == set(peer), f"case sets differ: harness only {sorted(set(ids) - set(peer))[:10]}, " \
                                  f"runner only {sorted(set(peer) - set(ids))[:10]}"
    ours = harness_results(ids)
    rules = policy()
    table: Counter = Counter()
    wrong, used = [], set()
    for i in ids:
        record, theirs = ours[i], peer[i]
        table[(record.status, theirs.outcome)] += 1
        if (record.status in PASSING) == (theirs.outcome == "pass"):
            continue
        rule = _explained(i, theirs.message, rules)
        if rule is not None:
            used.add(rule)
            continue
        last = (theirs.message.strip().splitlines() or [""])[-1][:200]
        wrong.append(f"{i}: harness {record.status} ({record.reason[:200]}) vs ONNX runner {theirs.outcome} ({last})")
    return table, wrong, used


def format_table(table: Counter) -> str:
    """Harness status (rows) x ONNX runner outcome (columns)."""
    cols = sorted({o for _, o in table})
    rows = sorted({s for s, _ in table})
    lines = ["harness \\ runner".ljust(16) + "".join(c.rjust(8) for c in cols)]
    lines += [r.ljust(16) + "".join(str(table.get((r, c), 0)).rjust(8) for c in cols) for r in rows]
    return "\n".join(lines)


def test_policy_entries_say_why():
    for pattern, rule in policy().items():
        assert len(rule["reason"]) > 40, f"{pattern}: a policy difference needs its reason, got {rule!r}"
        assert set(rule) <= {"reason", "when_runner_says"}, f"{pattern}: unknown keys {set(rule)}"


def test_harness_agrees_with_onnx_runner_on_the_subset(tmp_path):
    table, wrong, _ = crosscheck(list(SUBSET), tmp_path)
    assert not wrong, "harness and ONNX's runner disagree:\n" + "\n".join(wrong) + "\n" + format_table(table)


@pytest.mark.slow
def test_harness_agrees_with_onnx_runner_on_every_case(tmp_path):
    """The full set (~2,000 cases): no unexplained disagreement and no policy entry that nothing needs."""
    start = time.perf_counter()
    table, wrong, used = crosscheck(None, tmp_path)
    print(f"\n{format_table(table)}\n{sum(table.values())} cases, {time.perf_counter() - start:.0f} s")
    if out := os.environ.get("HARNESS_CROSSCHECK_OUT"):
        import json

        Path(out).write_text(json.dumps({"table": [[s, o, n] for (s, o), n in sorted(table.items())],
                                         "wrong": wrong, "used": sorted(used)}, indent=1))
    assert not wrong, "harness and ONNX's runner disagree:\n" + "\n".join(wrong)
    stale = set(policy()) - used
    assert not stale, f"policy entries no disagreement needs any more (remove them): {sorted(stale)}"


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
