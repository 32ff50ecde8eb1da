"""digits_cnn: deterministic data, cached trained weights, real accuracy through real engines."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="digits_cnn: pip install scikit-learn (extra 'zoo')")

from engines import needs_ort

from harness.core.options import CaseRequest
from harness.core.types import Precision
from harness.model.inputs import calibration_set, input_sets
from harness.model.reference import run_torch
from harness.run.case import run_case
from model_zoo import digits, get_model


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(tmp_path_factory.mktemp("hc-digits")))
        yield


def test_split_is_deterministic_and_disjoint():
    data = digits.split()
    assert (len(data.train_x), len(data.test_x)) == (1348, 449)
    assert data.train_x.shape[1:] == (1, 8, 8)
    assert data.train_x.dtype == np.float32
    assert data.train_x.min() >= 0.0
    assert data.train_x.max() <= 1.0
    digits.split.cache_clear()
    again = digits.split()
    assert np.array_equal(again.test_x, data.test_x)
    assert np.array_equal(again.test_y, data.test_y)
    train_rows = {row.tobytes() for row in data.train_x}
    overlap = sum(row.tobytes() in train_rows for row in data.test_x)
    assert overlap <= 5, f"{overlap} held-out images also in training (load_digits has a few exact duplicates)"


def test_weights_are_trained_once_and_cached_by_hash():
    path = digits.weights_path()
    assert path.name == f"digits_cnn-{digits.weights_key(digits.split())}.pt"
    assert path.with_name(path.name + ".sha256").is_file()
    mtime = path.stat().st_mtime_ns
    assert digits.weights_path().stat().st_mtime_ns == mtime  # the second call loads, it does not retrain
    a, b = digits.trained_model(), get_model("digits_cnn").build()
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert np.array_equal(va.numpy(), vb.numpy()), k


def test_trained_model_is_accurate_on_the_held_out_split():
    module = get_model("digits_cnn").build()
    accuracy = digits.top1_accuracy(lambda feeds: run_torch(module, feeds, ["input"], ["output"]))
    assert accuracy >= 0.95


def test_calibration_and_input_sets_are_domain_data():
    spec = get_model("digits_cnn")
    train_rows = {row.tobytes() for row in digits.split().train_x}
    calib = calibration_set(spec, count=8)
    assert len(calib) == 8
    assert all(f["input"][0].tobytes() in train_rows for f in calib)
    names = [s.name for s in input_sets(spec)]
    assert {"held-out-0", "held-out-batch-6", "random[batch=4]"} <= set(names)


@needs_ort
def test_int8_keeps_99_percent_of_fp32_accuracy_on_ort():
    fp32 = run_case(CaseRequest("digits_cnn", "ort", Precision.FP32, accuracy=True))
    int8 = run_case(CaseRequest("digits_cnn", "ort", Precision.INT8, accuracy=True))
    assert fp32.status == "pass", fp32.reason
    assert int8.executed_precision == "int8", int8.executed_precision
    assert fp32.accuracy >= 0.95
    assert int8.accuracy >= 0.99 * fp32.accuracy, (int8.accuracy, fp32.accuracy)
