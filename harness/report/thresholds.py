"""``--fail-on`` thresholds (``p50:10%``, ``cosine:0.001``...), gates (``missing``, ``unmeasured``, ``status``)
and the latency significance tests.

The unit of evidence for latency is a repeated trial: records carry ``latency["trials_p50_ms"]``, the
median of each of k >= 3 independent trials, and a slowdown must show between trials (one-sided Welch
t-test on log trial medians). Iterations of one process are autocorrelated (same caches, frequency,
neighbours), so a test that treats them as independent samples finds "significant" differences between
two identical runs; it is used only for records without trials and its verdict is marked weak evidence.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ALPHA = 0.01
"""Significance level of the per-iteration latency test (weak evidence): a slowdown must be this unlikely."""
TRIAL_ALPHA = 0.05
"""Significance level of the trial test. With k = 3..5 trials a Welch t-test has few degrees of freedom, and
the threshold (a 10 % slowdown, say) already keeps noise out: simulated with per-iteration CV 10-25 %, AR(1)
autocorrelation and 3-5 % process-to-process noise, alpha 0.01 missed a 20 % slowdown in a third of k=3
comparisons, 0.05 in under 3 %, with no more false alarms (tests/test_trials.py)."""

MIN_SAMPLES = 5
MIN_TRIALS = 3
"""Trial medians needed on each side for the trial test (fewer: the weak per-iteration test)."""

GATES = ("missing", "unmeasured", "status")
"""Gates on by default: cases of the baseline absent from the current run; a measurement the baseline had and a
passing current case lacks (or an explicit threshold that judged no case); pass -> skipped / pass -> fallback."""


@dataclass(frozen=True)
class Metric:
    """A comparable metric: the frame column, which direction is worse, and the units a threshold may use."""

    name: str
    column: str
    higher_is_worse: bool
    units: tuple[str, ...]  # "%" = relative; others are absolute units ("" = plain number)
    latency: bool = False


METRICS = {m.name: m for m in (
    Metric("p50", "p50_ms", True, ("%", "ms"), latency=True),
    Metric("p90", "p90_ms", True, ("%", "ms"), latency=True),
    Metric("p99", "p99_ms", True, ("%", "ms"), latency=True),
    Metric("mean", "mean_ms", True, ("%", "ms"), latency=True),
    Metric("min", "min_ms", True, ("%", "ms"), latency=True),
    Metric("peak_rss_mb", "peak_rss_mb", True, ("%", "mb", "")),
    Metric("artifact_mb", "artifact_mb", True, ("%", "mb", "")),
    Metric("cosine", "cosine", False, ("",)),
    Metric("max_abs", "max_abs", True, ("%", "")),
    Metric("accuracy", "accuracy", False, ("%", "")),
    Metric("items_per_s", "best_items_per_s", False, ("%",)),
)}

EXAMPLES = "p50:10%, p99:20%, p50:0.5ms, cosine:0.001, peak_rss_mb:25%"


class FailOnSyntaxError(ValueError):
    """A ``--fail-on`` item that does not parse."""


@dataclass(frozen=True)
class FailOn:
    """One threshold: the metric may get worse by at most ``limit`` (a fraction when ``relative``)."""

    metric: str
    limit: float
    relative: bool
    unit: str = ""

    @property
    def spec(self) -> Metric:
        return METRICS[self.metric]

    def __str__(self) -> str:
        return f"{self.metric}:{self.limit * 100:g}%" if self.relative else f"{self.metric}:{self.limit:g}{self.unit}"

    def worsening(self, base: float, cur: float) -> float:
        """How much worse ``cur`` is than ``base``, in this threshold's terms (negative = better)."""
        delta = (cur - base) if self.spec.higher_is_worse else (base - cur)
        if not self.relative:
            return delta
        if base == 0:
            return 0.0 if delta <= 0 else math.inf
        return delta / abs(base)

    def exceeded(self, base: float, cur: float) -> bool:
        """True when both values are known and ``cur`` is worse than ``base`` by more than the limit."""
        if not (math.isfinite(base) and math.isfinite(cur)):
            return False
        return self.worsening(base, cur) > self.limit


DEFAULT_FAIL_ON = ("p50:10%",)


@dataclass(frozen=True)
class Criteria:
    """Everything ``--fail-on`` sets: metric thresholds (``explicit`` when given, not the default) and gates."""

    thresholds: tuple[FailOn, ...]
    gates: frozenset[str] = frozenset(GATES)
    explicit: bool = True

    def __str__(self) -> str:
        off = [f"no-{g}" for g in GATES if g not in self.gates]
        return ", ".join([*map(str, self.thresholds), *[g for g in GATES if g in self.gates], *off])


def _items(items: Sequence[str] | str) -> list[str]:
    if isinstance(items, str):
        items = [items]
    return [p.strip() for item in items for p in str(item).split(",") if p.strip()]


def parse_criteria(items: Sequence[str] | str) -> Criteria:
    """Parse ``--fail-on`` items: ``METRIC:THRESHOLD``, a gate name (``missing``, ``unmeasured``, ``status``; all on
    by default) or ``no-GATE`` to switch one off. Without a metric threshold, ``p50:10%`` applies (not explicit)."""
    gates = set(GATES)
    metrics: list[str] = []
    for part in _items(items):
        name = part.lower()
        if name in GATES:
            gates.add(name)
        elif name.startswith("no-") and name[3:] in GATES:
            gates.discard(name[3:])
        else:
            metrics.append(part)
    explicit = bool(metrics)
    return Criteria(parse_fail_on(metrics or list(DEFAULT_FAIL_ON)), frozenset(gates), explicit)


def parse_fail_on(items: Sequence[str] | str) -> tuple[FailOn, ...]:
    """Parse ``["p50:10%", "cosine:0.001"]`` (items may also be comma-separated; gate names are skipped)."""
    parts = [p for p in _items(items) if p.lower() not in GATES and p.lower().removeprefix("no-") not in GATES]
    if not parts:
        raise FailOnSyntaxError(f"no --fail-on threshold given; use METRIC:THRESHOLD such as {EXAMPLES}")
    return tuple(_parse_one(p) for p in parts)


def _parse_one(text: str) -> FailOn:
    known = ", ".join(METRICS)
    m = re.fullmatch(r"([A-Za-z0-9_]+)\s*:\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%|ms|mb|MB)?", text)
    if m is None:
        raise FailOnSyntaxError(
            f"bad --fail-on {text!r}: expected METRIC:THRESHOLD with a non-negative number and an optional unit "
            f"(% relative; ms or MB absolute), e.g. {EXAMPLES}; metrics: {known}; or a gate: "
            f"{', '.join(GATES)} (on by default; no-GATE switches one off)")
    name, number, unit = m.group(1).lower(), float(m.group(2)), (m.group(3) or "").lower()
    metric = METRICS.get(name)
    if metric is None:
        raise FailOnSyntaxError(f"bad --fail-on {text!r}: unknown metric {name!r}; metrics: {known} "
                                f"(e.g. {EXAMPLES})")
    if unit not in metric.units:
        allowed = " or ".join(repr(u) if u else "a plain number" for u in metric.units)
        raise FailOnSyntaxError(f"bad --fail-on {text!r}: {name} takes {allowed} (e.g. "
                                f"{name}:{'10%' if '%' in metric.units else '0.001'})")
    return FailOn(metric=name, limit=number / 100 if unit == "%" else number, relative=unit == "%", unit=unit)


@dataclass(frozen=True)
class Significance:
    """Whether ``current`` latency is significantly slower than ``baseline``.

    ``weak``: the test treated the iterations of one process as independent samples (records without
    trials); ``baseline_ms``/``current_ms``: the p50 estimates the test compared (geometric mean of the
    trial medians), NaN for the per-iteration test.
    """

    slower: bool
    p_value: float
    method: str
    weak: bool = False
    baseline_ms: float = math.nan
    current_ms: float = math.nan

    def __str__(self) -> str:
        return f"{self.method} p={self.p_value:.2g}" + (" (weak evidence)" if self.weak else "")


def latency_test(base_trials: Sequence[float], cur_trials: Sequence[float], base_samples: Sequence[float],
                 cur_samples: Sequence[float]) -> Significance | None:
    """The trial test when both sides have >= MIN_TRIALS trial medians, else the weak per-iteration test."""
    if len(base_trials) >= MIN_TRIALS and len(cur_trials) >= MIN_TRIALS:
        return trial_test(base_trials, cur_trials, TRIAL_ALPHA)
    weak = slower_test(base_samples, cur_samples, ALPHA)
    return None if weak is None else Significance(weak.slower, weak.p_value, weak.method + " over iterations",
                                                  weak=True)


def trial_test(baseline: Sequence[float], current: Sequence[float], alpha: float = TRIAL_ALPHA) -> Significance:
    """One-sided Welch t-test that the log trial medians of ``current`` are larger (slower)."""
    b = np.log(np.asarray(baseline, dtype=np.float64))
    c = np.log(np.asarray(current, dtype=np.float64))
    diff = float(c.mean() - b.mean())
    vb, vc = float(b.var(ddof=1)) / b.size, float(c.var(ddof=1)) / c.size
    se2 = vb + vc
    if se2 <= 0.0:  # identical trials on both sides: the difference is exact
        p = 0.0 if diff > 0 else 1.0
    else:
        df = se2 * se2 / (vb * vb / (b.size - 1) + vc * vc / (c.size - 1))
        p = t_sf(diff / math.sqrt(se2), df)
    return Significance(slower=p < alpha, p_value=p, method=f"Welch t on log trial medians (k={b.size} vs {c.size})",
                        baseline_ms=math.exp(float(b.mean())), current_ms=math.exp(float(c.mean())))


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom (regularized incomplete beta; no scipy)."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t > 0 else 1.0 - tail


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) by Lentz's continued fraction (Numerical Recipes 6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast only below this point: use the symmetry
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return front * h / a


def slower_test(baseline: Sequence[float], current: Sequence[float], alpha: float = ALPHA) -> Significance | None:
    """One-sided test that current samples are larger; None when either side has too few samples.

    Mann-Whitney U (scipy) when available; otherwise a bootstrap of the median ratio with numpy.
    """
    if len(baseline) < MIN_SAMPLES or len(current) < MIN_SAMPLES:
        return None
    try:
        from scipy.stats import mannwhitneyu
    except ImportError:
        return bootstrap_test(baseline, current, alpha)
    p = float(mannwhitneyu(np.asarray(current), np.asarray(baseline), alternative="greater").pvalue)
    return Significance(slower=p < alpha, p_value=p, method="Mann-Whitney")


def bootstrap_test(baseline: Sequence[float], current: Sequence[float], alpha: float = ALPHA,
                   resamples: int = 4000, seed: int = 0) -> Significance:
    """Bootstrap the ratio of medians; "p" is the share of resamples where current is not slower."""
    rng = np.random.default_rng(seed)
    b = np.asarray(baseline, dtype=np.float64)
    c = np.asarray(current, dtype=np.float64)
    mb = np.median(b[rng.integers(0, b.size, (resamples, b.size))], axis=1)
    mc = np.median(c[rng.integers(0, c.size, (resamples, c.size))], axis=1)
    ratio = mc / np.where(mb > 0, mb, np.nan)
    p = float(np.mean(~(ratio > 1.0)) + 0.5 / resamples)  # never exactly 0 for a finite number of resamples
    return Significance(slower=p < alpha, p_value=min(p, 1.0), method="bootstrap")


def trial_spread(lat: dict[str, Any]) -> str:
    """A measurement's trial medians as ``a/b/c ms`` (its CV when it has fewer than two trials)."""
    trials = lat.get("trials_p50_ms") or []
    if len(trials) > 1:
        return "/".join(f"{t:.3g}" for t in trials) + " ms"
    return f"CV {lat.get('cv', math.nan):.2g}"
