"""Pure comparison of engine outputs with a reference.

``compare()`` returns a ``CompareResult`` that is truthy when every output is
within tolerance, so ``assert compare(ref, out, tol)`` reads naturally.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from harness.core.types import Feeds, Precision

DEFAULT_KEY = ""
"""Key of the default entry in a per-output tolerance mapping."""


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria for one float output.

    An element is within tolerance when ``|out - ref| <= atol + rtol * |ref|``;
    the output passes when the fraction of elements outside is at most
    ``max_mismatch_fraction`` and the cosine similarity is at least ``min_cosine``.
    Integer and boolean outputs always compare exactly.
    """

    atol: float = 1e-4
    rtol: float = 1e-3
    min_cosine: float = 0.9999
    max_mismatch_fraction: float = 0.0


DEFAULT_TOLERANCES: dict[Precision, Tolerance] = {
    Precision.FP32: Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.9999),
    Precision.FP16: Tolerance(atol=math.inf, rtol=math.inf, min_cosine=0.999),
    Precision.INT8: Tolerance(atol=math.inf, rtol=math.inf, min_cosine=0.98),
}

ToleranceSpec = Tolerance | Mapping[str, Tolerance]


def tolerance_for(tol: ToleranceSpec, output: str) -> Tolerance:
    """The tolerance of one output from a single tolerance or a per-output mapping."""
    if isinstance(tol, Tolerance):
        return tol
    if output in tol:
        return tol[output]
    if DEFAULT_KEY in tol:
        return tol[DEFAULT_KEY]
    raise KeyError(f"no tolerance for output {output!r} and no default ('' key) in {sorted(tol)}")


@dataclass(frozen=True)
class OutputComparison:
    """Error statistics of one output against its reference."""

    name: str
    passed: bool
    reason: str = ""
    max_abs: float = 0.0
    max_rel: float = 0.0
    cosine: float = 1.0
    mismatch_fraction: float = 0.0
    nonfinite: int = 0
    exact: bool = False
    error_vs_fp64_ratio: float | None = None

    def __bool__(self) -> bool:
        return self.passed

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form for records."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CompareResult:
    """All outputs of one comparison; truthy when all passed."""

    outputs: tuple[OutputComparison, ...] = field(default_factory=tuple)
    missing: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return not self.missing and all(self.outputs)

    @property
    def nonfinite(self) -> int:
        """Non-finite values in the engine's outputs (a NaN reference does not excuse them)."""
        return sum(o.nonfinite for o in self.outputs)

    @property
    def reason(self) -> str:
        """Why it failed, one clause per failing output; empty when it passed."""
        parts = [f"output {m!r} missing from engine outputs" for m in self.missing]
        parts += [f"{o.name}: {o.reason}" for o in self.outputs if not o.passed]
        return "; ".join(parts)

    def worst(self) -> dict[str, float]:
        """Worst value of each metric across outputs (the record's summary metrics)."""
        if not self.outputs:
            return {}
        ratios = [o.error_vs_fp64_ratio for o in self.outputs if o.error_vs_fp64_ratio is not None]
        return {
            "max_abs": max(o.max_abs for o in self.outputs),
            "max_rel": max(o.max_rel for o in self.outputs),
            "cosine": min(o.cosine for o in self.outputs),
            "mismatch_fraction": max(o.mismatch_fraction for o in self.outputs),
            "nonfinite": float(self.nonfinite),
            **({"error_vs_fp64_ratio": max(ratios)} if ratios else {}),
        }


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the flattened arrays in float64; 1.0 when both are all zeros."""
    x = a.astype(np.float64).ravel()
    y = b.astype(np.float64).ravel()
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    if nx == 0.0 and ny == 0.0:
        return 1.0
    if nx == 0.0 or ny == 0.0:
        return 0.0
    return float(np.dot(x, y) / (nx * ny))


def compare_output(name: str, ref: np.ndarray, out: np.ndarray, tol: Tolerance) -> OutputComparison:
    """Compare one output array with its reference."""
    ref, out = np.asarray(ref), np.asarray(out)
    if ref.shape != out.shape:
        reason = f"shape {out.shape} != reference {ref.shape}"
        return OutputComparison(name, False, reason, math.inf, math.inf, 0.0, 1.0)
    if ref.ndim == 0:
        ref, out = ref.reshape(1), out.reshape(1)
    if ref.dtype.kind in "iub" or out.dtype.kind in "iub":
        return _compare_exact(name, ref, out)
    r = ref.astype(np.float64)
    o = out.astype(np.float64)
    finite_ref = np.isfinite(r)
    same_inf = np.isinf(r) & (o == r)  # an infinity the reference has too (e.g. a -inf mask) agrees
    bad = ~np.isfinite(o) & ~same_inf  # NaN never agrees, not even with a NaN reference
    nonfinite = int(bad.sum())
    ref_nan = int(np.isnan(r).sum())
    diff = np.abs(o - r)
    diff[bad] = math.inf
    both = finite_ref & np.isfinite(o)
    max_abs = float(diff[both].max()) if both.any() else 0.0
    # relative error only where |ref| is not tiny, so zeros in the reference do not explode it
    floor = max(tol.atol if math.isfinite(tol.atol) else 0.0, 1e-6 * float(np.abs(r[finite_ref]).max(initial=0.0)), 1e-12)
    rel_mask = both & (np.abs(r) > floor)
    max_rel = float((diff[rel_mask] / np.abs(r[rel_mask])).max()) if rel_mask.any() else 0.0
    outside = diff > tol.atol + tol.rtol * np.abs(r) if math.isfinite(tol.atol + tol.rtol) else bad
    mismatch_fraction = float(outside.sum() / max(outside.size, 1))
    cos = cosine_similarity(np.where(both, o, 0.0), np.where(both, r, 0.0))
    reasons = []
    if nonfinite:
        reasons.append(f"{nonfinite} non-finite values")
    if ref_nan:
        reasons.append(f"the PyTorch reference itself has {ref_nan} NaN values (the model computes NaN on this input)")
    if mismatch_fraction > tol.max_mismatch_fraction:
        reasons.append(
            f"{mismatch_fraction:.2%} of elements outside atol={tol.atol:g} rtol={tol.rtol:g} (max abs {max_abs:.3g})"
        )
    if cos < tol.min_cosine:
        reasons.append(f"cosine {cos:.6f} < {tol.min_cosine}")
    return OutputComparison(name, not reasons, ", ".join(reasons), max_abs, max_rel, cos, mismatch_fraction, nonfinite)


def _compare_exact(name: str, ref: np.ndarray, out: np.ndarray) -> OutputComparison:
    if ref.dtype.kind != out.dtype.kind and not (ref.dtype.kind in "iu" and out.dtype.kind in "iu"):
        return OutputComparison(name, False, f"dtype {out.dtype} != reference {ref.dtype}", exact=True)
    differ = ref.astype(np.int64) != out.astype(np.int64)
    count = int(differ.sum())
    fraction = count / max(differ.size, 1)
    max_abs = float(np.abs(ref.astype(np.int64) - out.astype(np.int64)).max(initial=0))
    reason = f"{count} of {differ.size} integer elements differ (exact comparison)" if count else ""
    return OutputComparison(name, not count, reason, max_abs, 0.0, 1.0 - fraction, fraction, 0, exact=True)


def compare(
    ref: Feeds,
    out: Feeds,
    tol: ToleranceSpec = DEFAULT_TOLERANCES[Precision.FP32],
    *,
    fp64_ref: Feeds | None = None,
    fp32_ref: Feeds | None = None,
) -> CompareResult:
    """Compare every reference output with the engine's.

    With ``fp64_ref`` (the model run in float64) and ``fp32_ref`` (PyTorch FP32,
    defaulting to ``ref``), each float output also gets ``error_vs_fp64_ratio``:
    the engine's max error against FP64 divided by PyTorch FP32's own.
    """
    results = []
    for name, r in ref.items():
        if name not in out:
            continue
        res = compare_output(name, r, out[name], tolerance_for(tol, name))
        if fp64_ref is not None and name in fp64_ref and not res.exact and res.max_abs != math.inf:
            res = replace(res, error_vs_fp64_ratio=fp64_error_ratio(out[name], (fp32_ref or ref)[name], fp64_ref[name]))
        results.append(res)
    missing = tuple(n for n in ref if n not in out)
    return CompareResult(tuple(results), missing)


def fp64_error_ratio(engine: np.ndarray, torch_fp32: np.ndarray, fp64: np.ndarray) -> float:
    """max|engine - fp64| / max|torch_fp32 - fp64|: ~1 means the engine is as good as FP32 can be."""
    e = float(np.abs(np.asarray(engine, np.float64) - fp64).max(initial=0.0))
    t = float(np.abs(np.asarray(torch_fp32, np.float64) - fp64).max(initial=0.0))
    return e / max(t, np.finfo(np.float32).tiny)


def merge(results: list[CompareResult]) -> CompareResult:
    """Combine comparisons over several input sets: the worst value of each metric per output."""
    by_name: dict[str, OutputComparison] = {}
    missing: set[str] = set()
    for res in results:
        missing.update(res.missing)
        for o in res.outputs:
            prev = by_name.get(o.name)
            by_name[o.name] = o if prev is None else _worse(prev, o)
    return CompareResult(tuple(by_name.values()), tuple(sorted(missing)))


def _worse(a: OutputComparison, b: OutputComparison) -> OutputComparison:
    ratios = [r for r in (a.error_vs_fp64_ratio, b.error_vs_fp64_ratio) if r is not None]
    return OutputComparison(
        name=a.name,
        passed=a.passed and b.passed,
        reason="; ".join(r for r in (a.reason, b.reason) if r),
        max_abs=max(a.max_abs, b.max_abs),
        max_rel=max(a.max_rel, b.max_rel),
        cosine=min(a.cosine, b.cosine),
        mismatch_fraction=max(a.mismatch_fraction, b.mismatch_fraction),
        nonfinite=a.nonfinite + b.nonfinite,
        exact=a.exact,
        error_vs_fp64_ratio=max(ratios) if ratios else None,
    )


def compare_strict(expected: Feeds, out: Feeds, tol: ToleranceSpec, *, fp64_ref: Feeds | None = None) -> CompareResult:
    """``compare`` against an expected output that is the spec (ONNX test data): dtypes must match exactly,
    strings compare exactly. ``fp64_ref`` is accepted for a uniform signature and unused (no FP64 spec)."""
    numeric: dict[str, np.ndarray] = {}
    strict: list[OutputComparison] = []
    scalars: dict[str, np.ndarray] = {}
    for name, ref in expected.items():
        if name not in out:
            continue
        got = np.asarray(out[name])
        if ref.dtype.kind in "OSU" or got.dtype.kind in "OSU":
            same = ref.shape == got.shape and bool(np.array_equal(ref.astype(str), got.astype(str)))
            strict.append(OutputComparison(name, same, "" if same else f"strings differ (got shape {got.shape}, "
                                                                       f"expected {ref.shape})", exact=True))
        elif got.dtype != ref.dtype:
            strict.append(OutputComparison(name, False, f"dtype {got.dtype} != expected {ref.dtype}", exact=True))
        elif ref.ndim == 0 and got.ndim == 0:  # compare_output indexes its diff array: give scalars an axis
            numeric[name], scalars[name] = ref.reshape(1), got.reshape(1)
        else:
            numeric[name] = ref
    res = compare(numeric, {**out, **scalars}, tol)
    return CompareResult(res.outputs + tuple(strict), tuple(n for n in expected if n not in out))
