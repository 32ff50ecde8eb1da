"""A low precision is a pass only with evidence it executed; integer kernels are no float downgrade."""

from __future__ import annotations

from pathlib import Path

import pytest
from engines import needs_ort, needs_ov

from harness.core.options import CaseRequest
from harness.core.precision import precision_match
from harness.core.types import Precision
from harness.run.case import run_case

ZOO = str(Path(__file__).parent / "data" / "evidence_zoo" / "evidence_models.py")


@pytest.mark.parametrize(("executed", "requested", "match"), [
    ("mixed(i32 60%,u32 40%)", Precision.FP32, "exact"),  # an integer-only graph: nothing to downgrade
    ("mixed(fp32 80%,i32 20%)", Precision.FP32, "exact"),  # index arithmetic beside fp32 compute
    ("mixed(bf16 80%,i32 20%)", Precision.FP32, "fallback"),
    ("mixed(i32 60%,u32 40%)", Precision.FP16, "fallback"),  # no fp16 kernel: no evidence
    ("mixed(int8 67%,fp32 33%)", Precision.INT8, "partial"),
    ("unknown", Precision.INT8, "unknown"),
])
def test_precision_match_counts_float_kernels_for_float_requests(executed, requested, match):
    assert precision_match(requested, executed) == match


@needs_ort
def test_int8_without_evidence_is_a_fallback_not_a_pass():
    record = run_case(CaseRequest("evidence_elementwise", "ort", Precision.INT8, zoo_files=(ZOO,)))
    assert record.status == "fallback", (record.status, record.executed_precision, record.reason)
    assert record.cause == "engine"
    assert "int8" not in record.executed_precision or record.precision_match != "exact"


@needs_ov
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor:UserWarning")  # deepcopy of a ScriptModule
def test_integer_loop_counters_do_not_make_an_fp32_model_a_fallback():
    record = run_case(CaseRequest("loop_scripted", "ov", Precision.FP32))
    assert record.status == "pass", (record.status, record.executed_precision, record.reason)
