"""Conformance: every model x backend x precision matches PyTorch FP32 within tolerance.

A passing case also records its latency and peak memory (quick by default; ``--bench`` for the
rigorous measurement, ``--no-measure`` for verdicts only): the main job's report shows speed
beside every verdict without running the perf suite.
"""

from __future__ import annotations


def test_conformance(case, harness_run, harness_config):
    record = harness_run(case, measure=harness_config.quick_measure)
    assert record.status == "pass", f"{record.status}: {record.reason}"
