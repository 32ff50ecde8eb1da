"""harness.run.timing: the timed loop's stopping rules and statistics, on callables of known duration."""

from __future__ import annotations

import time

import numpy as np
import pytest

from harness.run.timing import RECORD_SAMPLES, Latency, bare_loop_ms, combine, measure, summarize, thin

SLEEP_S = 0.005


def test_sleep_5ms_median_within_bounds_and_both_minimums_met():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(SLEEP_S)

    start = time.perf_counter()
    lat = measure(fn, min_time_s=0.2, min_iterations=10, warmup=2)
    wall = time.perf_counter() - start
    assert 5.0 <= lat.p50_ms <= 15.0
    assert lat.min_ms >= 5.0  # sleep never returns early: nothing is lost from the timed region
    assert lat.n >= 10
    assert lat.elapsed_s >= 0.2
    assert len(calls) == lat.n + 2  # warm-up calls are made and not counted
    assert wall >= lat.elapsed_s


def test_min_iterations_dominates_when_calls_are_slow():
    lat = measure(lambda: time.sleep(0.02), min_time_s=0.001, min_iterations=7, warmup=0)
    assert lat.n == 7
    assert lat.elapsed_s >= 7 * 0.02


def test_max_samples_stops_fast_calls_before_min_time():
    lat = measure(lambda: None, min_time_s=30.0, min_iterations=10, warmup=0, max_samples=500)
    assert lat.n == 500
    assert lat.elapsed_s < 30.0


def test_max_samples_never_undercuts_min_iterations():
    lat = measure(lambda: None, min_time_s=0.0, min_iterations=50, warmup=0, max_samples=5)
    assert lat.n == 50


def test_sync_is_inside_the_timed_region():
    synced = []

    def sync():
        synced.append(1)
        time.sleep(SLEEP_S)

    lat = measure(lambda: None, min_time_s=0.0, min_iterations=10, warmup=1, sync=sync)
    assert lat.min_ms >= 5.0
    assert len(synced) == lat.n + 1


def test_statistics_of_known_samples():
    ms = np.arange(1, 101, dtype=np.float64)  # 1..100 ms
    lat = summarize((ms * 1e6).astype(np.int64), elapsed_s=5.05)
    assert lat.p50_ms == pytest.approx(50.5)
    assert lat.p90_ms == pytest.approx(90.1)
    assert lat.p99_ms == pytest.approx(99.01)
    assert lat.mean_ms == pytest.approx(50.5)
    assert lat.min_ms == 1.0
    assert lat.n == 100
    assert lat.stdev_ms == pytest.approx(np.std(ms, ddof=1), rel=1e-6)
    assert lat.cv == pytest.approx(np.std(ms, ddof=1) / 50.5, rel=1e-4)
    assert lat.unstable  # cv ~0.57


def test_steady_samples_are_stable_and_outliers_are_flagged():
    steady = summarize([10_000_000] * 50)
    assert (steady.cv, steady.unstable) == (0.0, False)
    noisy = summarize([10_000_000] * 45 + [100_000_000] * 5)
    assert noisy.unstable
    assert noisy.p50_ms == 10.0


def test_as_dict_has_the_record_keys_and_caps_samples():
    lat = summarize(list(range(1_000_000, 2_000_000, 1000)))  # 1000 samples
    d = lat.as_dict()
    assert {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms", "cv", "min_ms", "n", "samples_ms",
            "unstable"} <= set(d)
    assert d["n"] == 1000
    assert len(d["samples_ms"]) == RECORD_SAMPLES
    assert d["samples_ms"][0] == 1.0
    assert d["samples_ms"][-1] == pytest.approx(1.999)
    assert isinstance(lat, Latency)
    assert lat.items_per_s == pytest.approx(1000 / lat.mean_ms)


def test_thin_keeps_short_lists_whole():
    assert thin([1.0, 2.0], 200) == (1.0, 2.0)
    assert len(thin(list(range(1000)), 10)) == 10


def test_empty_or_invalid_input_raises():
    with pytest.raises(ValueError, match="zero calls"):
        summarize([])
    with pytest.raises(ValueError, match="min_iterations"):
        measure(lambda: None, min_iterations=0)


def test_bare_loop_matches_known_duration():
    assert 5.0 <= bare_loop_ms(lambda: time.sleep(SLEEP_S), iterations=10, warmup=0) <= 15.0


def test_engine_times_are_read_after_each_timed_call_outside_the_timed_region():
    reads = []

    def engine_ms():
        time.sleep(SLEEP_S)  # slow to read: must not land in the wall-clock samples
        reads.append(1)
        return 0.5

    lat = measure(lambda: None, min_time_s=0.0, min_iterations=10, warmup=2, engine_ms=engine_ms)
    assert len(reads) == lat.n == 10  # once per timed call, never during warm-up
    assert lat.p50_ms < 1.0
    assert lat.engine_p50_ms == 0.5
    assert lat.as_dict()["engine_p50_ms"] == 0.5
    assert "engine_p50_ms" not in measure(lambda: None, min_time_s=0.0, min_iterations=3, warmup=0).as_dict()


def test_trials_combine_all_samples_and_keep_each_median():
    fast = summarize([1_000_000] * 20, elapsed_s=0.02)
    slow = summarize([1_050_000] * 20, elapsed_s=0.022)
    both = combine([fast, slow, fast])
    assert both.n == 60
    assert both.trials_p50_ms == (1.0, 1.05, 1.0)
    assert both.as_dict()["trials_p50_ms"] == [1.0, 1.05, 1.0]
    assert both.p50_ms == 1.0
    assert both.elapsed_s == pytest.approx(0.062)
    assert not both.unstable  # the trials agree within 10 %


def test_trials_that_disagree_are_unstable_even_when_each_is_steady():
    """A drift no single trial shows (each has CV 0) still flags the measurement."""
    steady = [summarize([v] * 30) for v in (1_000_000, 1_000_000, 1_300_000)]
    assert not any(t.unstable for t in steady)
    assert combine(steady, cv_threshold=0.1).unstable
    with pytest.raises(ValueError, match="no trials"):
        combine([])


def test_a_single_measurement_has_one_trial_median():
    lat = measure(lambda: time.sleep(0.001), min_time_s=0.0, min_iterations=5, warmup=0)
    assert lat.as_dict()["trials_p50_ms"] == [lat.p50_ms]


def test_quick_bench_and_standard_options_split_totals_over_trials():
    from harness.core.options import MeasureOptions

    quick = MeasureOptions.quick()
    assert (quick.isolated, quick.batches, quick.trials) == (False, (), 3)
    per_trial = quick.timing_kwargs()
    assert per_trial["min_time_s"] == pytest.approx(0.1)
    assert per_trial["min_iterations"] * quick.trials >= quick.min_iterations
    assert MeasureOptions.standard().isolated
    bench = MeasureOptions.bench()
    assert (bench.isolated, bench.trials, bench.min_time_s, bench.min_iterations) == (True, 5, 5.0, 50)
    assert bench.timing_kwargs()["min_iterations"] == 10
    with pytest.raises(ValueError, match="trials >= 1"):
        MeasureOptions(trials=0)


def test_a_call_slower_than_the_quick_budget_is_warmed_once_and_timed_once():
    """A quick measurement of a reference path (torch fp16 on a CPU: seconds per call) must not take 20 calls:
    one warm-up call shows it is slower than the budget, then one call is timed. A fast call is unaffected."""
    import time as _time

    from harness.run.timing import measure

    calls = []

    def slow() -> None:
        calls.append(1)
        _time.sleep(0.03)

    lat = measure(slow, min_time_s=0.01, min_iterations=5, warmup=3, slow_call_s=0.01)
    assert (lat.n, len(calls)) == (1, 2)
    assert lat.p50_ms >= 30
    fast = measure(lambda: None, min_time_s=0.01, min_iterations=5, warmup=3, slow_call_s=0.01)
    assert fast.n >= 5
