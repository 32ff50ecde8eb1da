"""Task accuracy on real data: every ``accuracy``-tagged model x backend x precision.

Each case records ``accuracy``, the model's own metric (``ModelSpec.evaluate``):
digits_cnn's held-out top-1, minilm's lowest cosine to PyTorch over real
sentences. Reduced precisions must keep at least 99% of the same backend's
FP32 accuracy (MLPerf's rule for INT8, applied to FP16 too). The conformance
verdict is the conformance suite's business; here the task metric decides.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from harness.core.options import CaseRequest
from harness.core.record import Record
from harness.core.types import Precision
from harness.pytest_plugin import HarnessConfig, execute

pytestmark = pytest.mark.accuracy

KEEP_FRACTION = 0.99


def fp32_baseline(hc: HarnessConfig, case: CaseRequest) -> Record:
    """The same backend's FP32 accuracy record of this run; runs (and records) the FP32 case if there is none."""
    key = (case.model, case.backend, Precision.FP32.value)
    for record in [*reversed(hc.records), *reversed(hc.store.records())]:
        if record.suite == "accuracy" and (record.model, record.backend, record.precision) == key \
                and record.accuracy is not None:
            return record
    # not in this session (e.g. --precision int8, or an xdist worker that has not finished it): run it now
    return execute(hc, replace(case, precision=Precision.FP32, test_id=f"{case.model}-{case.backend}-fp32-baseline",
                               suite="accuracy", accuracy=True))


@pytest.mark.harness_cases(tags=["accuracy"])
def test_accuracy(case, harness_run, harness_config):
    record = harness_run(case, suite="accuracy", accuracy=True)
    assert record.accuracy is not None, f"no accuracy recorded: {record.status}: {record.reason}"
    if case.precision is Precision.FP32:
        return
    baseline = fp32_baseline(harness_config, case)
    if baseline.accuracy is None:
        pytest.skip(f"no FP32 baseline on {case.backend} to compare with: {baseline.status}: {baseline.reason}")
    floor = KEEP_FRACTION * baseline.accuracy
    assert record.accuracy >= floor, (
        f"{case.precision.value} accuracy {record.accuracy:.4f} < {KEEP_FRACTION:.0%} of {case.backend} fp32 "
        f"{baseline.accuracy:.4f} (floor {floor:.4f}); executed {record.executed_precision}"
    )
