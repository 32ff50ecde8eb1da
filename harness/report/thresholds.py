"""``--fail-on`` thresholds (``p50:10%``, ``cosine:0.001``...) and the latency significance test."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ALPHA = 0.01
"""Significance level of the latency test: a slowdown must be this unlikely under noise."""

MIN_SAMPLES = 5


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

EXAMPLES = "p50:10%, p99:20%, p50:0.5ms, cosine:0.001, peak_rss_mb:15%"


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


def parse_fail_on(items: Sequence[str] | str) -> tuple[FailOn, ...]:
    """Parse ``["p50:10%", "cosine:0.001"]`` (items may also be comma-separated)."""
    if isinstance(items, str):
        items = [items]
    out: list[FailOn] = []
    for item in items:
        for part in (p.strip() for p in str(item).split(",")):
            if part:
                out.append(_parse_one(part))
    if not out:
        raise FailOnSyntaxError(f"no --fail-on threshold given; use METRIC:THRESHOLD such as {EXAMPLES}")
    return tuple(out)


def _parse_one(text: str) -> FailOn:
    known = ", ".join(METRICS)
    m = re.fullmatch(r"([A-Za-z0-9_]+)\s*:\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%|ms|mb|MB)?", text)
    if m is None:
        raise FailOnSyntaxError(
            f"bad --fail-on {text!r}: expected METRIC:THRESHOLD with a non-negative number and an optional unit "
            f"(% relative; ms or MB absolute), e.g. {EXAMPLES}; metrics: {known}")
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
    """Whether ``current`` latency samples are significantly slower than ``baseline`` ones."""

    slower: bool
    p_value: float
    method: str

    def __str__(self) -> str:
        return f"{self.method} p={self.p_value:.2g}"


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
