"""Conformance: every model x backend x precision matches PyTorch FP32 within tolerance."""

from __future__ import annotations


def test_conformance(case, harness_run):
    record = harness_run(case)
    assert record.status == "pass", f"{record.status}: {record.reason}"
