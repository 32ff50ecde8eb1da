"""compare(): hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.core.compare import (
    Tolerance,
    compare,
    compare_output,
    compare_strict,
    cosine_similarity,
    fp64_error_ratio,
    merge,
)

TIGHT = Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.9999)


def test_identical_outputs_pass_with_zero_error():
    ref = {"y": np.array([1.0, -2.0, 3.0], np.float32)}
    res = compare(ref, {"y": ref["y"].copy()}, TIGHT)
    assert res
    (o,) = res.outputs
    assert (o.max_abs, o.max_rel, o.mismatch_fraction, o.nonfinite) == (0.0, 0.0, 0.0, 0)
    assert o.cosine == pytest.approx(1.0)


def test_hand_computed_errors():
    ref = np.array([1.0, 2.0, 4.0, 0.0], np.float32)
    out = np.array([1.0, 2.5, 4.0, 0.0], np.float32)
    o = compare_output("y", ref, out, TIGHT)
    assert not o
    assert o.max_abs == pytest.approx(0.5)
    assert o.max_rel == pytest.approx(0.25)  # 0.5 / 2.0; the zero element is excluded from relative error
    assert o.mismatch_fraction == pytest.approx(0.25)  # one of four elements outside atol + rtol*|ref|
    expected_cos = (1 + 5 + 16) / (math.sqrt(21) * math.sqrt(1 + 6.25 + 16))
    assert o.cosine == pytest.approx(expected_cos)
    assert "outside atol" in o.reason


def test_within_atol_plus_rtol_passes():
    ref = np.array([1000.0, 0.0], np.float32)
    out = np.array([1000.9, 5e-5], np.float32)  # 0.9 <= 1e-4 + 1e-3*1000; 5e-5 <= 1e-4
    assert compare_output("y", ref, out, TIGHT)


def test_relative_error_guarded_near_zero():
    ref = np.array([1e-12, 1.0], np.float32)
    out = np.array([2e-12, 1.0], np.float32)
    o = compare_output("y", ref, out, TIGHT)
    assert o.max_rel == 0.0  # the 100% relative error on a 1e-12 reference is noise, not signal
    assert o


def test_cosine_threshold_fails_even_without_elementwise_check():
    tol = Tolerance(atol=math.inf, rtol=math.inf, min_cosine=0.999)
    ref = np.array([1.0, 0.0], np.float32)
    out = np.array([1.0, 0.1], np.float32)  # cos = 1/sqrt(1.01) = 0.99504
    o = compare_output("y", ref, out, tol)
    assert not o
    assert o.cosine == pytest.approx(1 / math.sqrt(1.01))


def test_nonfinite_output_fails_and_is_counted():
    ref = np.array([1.0, 2.0, 3.0], np.float32)
    out = np.array([1.0, np.nan, np.inf], np.float32)
    res = compare({"y": ref}, {"y": out}, Tolerance(atol=math.inf, rtol=math.inf, min_cosine=0.0))
    assert not res
    assert res.nonfinite == 2
    assert "non-finite" in res.reason


def test_shape_mismatch_is_a_clear_failure():
    o = compare_output("y", np.zeros((2, 3)), np.zeros((3, 2)), TIGHT)
    assert not o
    assert "shape (3, 2) != reference (2, 3)" in o.reason


def test_integer_outputs_compare_exactly():
    ref = np.array([3, 1, 2], np.int64)
    assert compare_output("idx", ref, ref.astype(np.int32), TIGHT)
    o = compare_output("idx", ref, np.array([3, 1, 1], np.int64), Tolerance(atol=10, rtol=10, min_cosine=0))
    assert not o  # a generous float tolerance does not apply to integers
    assert o.exact
    assert "1 of 3 integer elements differ" in o.reason


def test_bool_outputs_compare_exactly():
    ref = np.array([True, False])
    assert not compare_output("m", ref, np.array([True, True]), TIGHT)


def test_missing_output_fails():
    res = compare({"a": np.ones(2), "b": np.ones(2)}, {"a": np.ones(2)}, TIGHT)
    assert not res
    assert "'b' missing" in res.reason


def test_per_output_tolerance_with_default_key():
    ref = {"a": np.array([1.0]), "b": np.array([1.0])}
    out = {"a": np.array([1.1]), "b": np.array([1.1])}
    res = compare(ref, out, {"": TIGHT, "b": Tolerance(atol=0.2, rtol=0, min_cosine=0)})
    assert [o.passed for o in res.outputs] == [False, True]


def test_fp64_ratio_separates_engine_error_from_dtype_floor():
    fp64 = np.array([1.0, 2.0])
    torch32 = fp64 + 1e-7
    engine_as_good = fp64 + 1e-7
    engine_worse = fp64 + 1e-4
    assert fp64_error_ratio(engine_as_good, torch32, fp64) == pytest.approx(1.0)
    assert fp64_error_ratio(engine_worse, torch32, fp64) == pytest.approx(1000.0)
    res = compare({"y": torch32}, {"y": engine_worse}, TIGHT, fp64_ref={"y": fp64})
    assert res.outputs[0].error_vs_fp64_ratio == pytest.approx(1000.0)


def test_merge_keeps_worst_metrics_and_any_failure():
    a = compare({"y": np.array([1.0, 2.0])}, {"y": np.array([1.0, 2.0])}, TIGHT)
    b = compare({"y": np.array([1.0, 2.0])}, {"y": np.array([1.0, 2.5])}, TIGHT)
    m = merge([a, b])
    assert not m
    assert m.worst()["max_abs"] == pytest.approx(0.5)


def test_cosine_of_zero_vectors():
    assert cosine_similarity(np.zeros(3), np.zeros(3)) == 1.0
    assert cosine_similarity(np.zeros(3), np.ones(3)) == 0.0


def test_an_infinite_reference_is_matched_only_by_the_same_infinity():
    """-inf expected (a causal mask), -3.4e38 out: no tolerance stretches to infinity (inf > inf is false)."""
    ref = np.array([[1.0, -np.inf, -np.inf], [2.0, np.inf, 3.0]], np.float32)
    out = ref.copy()
    out[0, 1] = out[0, 2] = np.finfo(np.float32).min
    loose = Tolerance(atol=1e-3, rtol=1e-3, min_cosine=-1.0)
    for fn in (compare, lambda r, o, t: compare_strict(r, o, t)):
        res = fn({"y": ref}, {"y": out}, loose)
        assert not res
        assert res.nonfinite == 0  # finite values where infinities belong: a mismatch, not a NaN/Inf failure
        assert "2 of 3 infinite reference values not matched" in res.reason
        assert "(0, 1): expected -inf, got -3.40282e+38" in res.reason
        assert res.outputs[0].max_abs == math.inf
        assert fn({"y": ref}, {"y": ref.copy()}, loose)  # the same infinities agree
    flipped = ref.copy()
    flipped[1, 1] = -np.inf
    assert "1 of 3 infinite" in compare({"y": ref}, {"y": flipped}, loose).reason


def test_nan_matches_nan_against_a_spec_but_never_against_pytorch():
    ref = np.array([np.nan, 1.0, np.nan], np.float32)
    same = ref.copy()
    assert compare_strict({"y": ref}, {"y": same}, TIGHT)  # the spec says NaN there (fmod by 0, sqrt(-1))
    torch_ref = compare({"y": ref}, {"y": same}, TIGHT)
    assert not torch_ref
    assert torch_ref.nonfinite == 2
    assert "PyTorch reference itself has 2 NaN" in torch_ref.reason
    number_for_nan = compare_strict({"y": ref}, {"y": np.array([0.0, 1.0, np.nan], np.float32)}, TIGHT)
    assert not number_for_nan
    assert number_for_nan.nonfinite == 0
    expected = "1 of 2 expected NaN values came out as numbers (first at (0,): expected nan, got 0)"
    assert expected in number_for_nan.reason
    nan_for_number = compare_strict({"y": ref}, {"y": np.array([np.nan, np.nan, np.nan], np.float32)}, TIGHT)
    assert not nan_for_number
    assert nan_for_number.nonfinite == 1


def test_sequences_and_optionals_compare_element_by_element():
    a, b = np.array([1.0, 2.0], np.float32), np.array([[3]], np.int64)
    res = compare_strict({"s": [a, b], "o": None, "v": a}, {"s": [a.copy(), b.copy()], "o": None, "v": a.copy()}, TIGHT)
    assert res, res.reason
    assert [o.name for o in res.outputs] == ["s[0]", "s[1]", "o", "v"]
    wrong = compare_strict({"s": [a, b]}, {"s": [a + 1, b]}, TIGHT)
    assert not wrong
    assert wrong.reason.startswith("s[0]: ")
    short = compare_strict({"s": [a, b]}, {"s": [a]}, TIGHT)
    assert "got a sequence of 1 tensors, expected a sequence of 2" in short.reason
    assert "got an empty optional, expected a float32 tensor" in compare_strict({"o": a}, {"o": None}, TIGHT).reason
    assert "expected an empty optional" in compare_strict({"o": None}, {"o": a}, TIGHT).reason
    assert compare_strict({"s": []}, {"s": []}, TIGHT)
    assert "dtype float64 != expected float32" in compare_strict({"v": a}, {"v": a.astype(np.float64)}, TIGHT).reason
