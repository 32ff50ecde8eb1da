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
        """Non-finite values in the engine's outputs where the reference has none (an infinity the reference has
        at the same place never counts; a NaN the reference has only against a spec, see ``compare_strict``)."""
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


def compare_output(name: str, ref: np.ndarray, out: np.ndarray, tol: Tolerance, *,
                   nan_equal: bool = False) -> OutputComparison:
    """Compare one output array with its reference.

    An infinite reference value is matched only by the same infinity at the same position (no
    tolerance can stretch to it: ``diff > atol + rtol*inf`` is never true). A NaN never agrees
    unless ``nan_equal`` (the reference is a spec, see ``compare_strict``): then a NaN matches a NaN
    at the same position and a number where NaN is expected is a mismatch.
    """
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
    ref_inf, ref_nan = np.isinf(r), np.isnan(r)
    inf_miss = ref_inf & (o != r)  # a finite value, a NaN or the other infinity where the reference is +-inf
    nan_ok = ref_nan & np.isnan(o) if nan_equal else np.zeros_like(ref_nan)
    nan_miss = ref_nan & ~np.isnan(o) if nan_equal else np.zeros_like(ref_nan)
    bad = ~np.isfinite(o) & ~ref_inf & ~nan_ok  # non-finite where the reference is finite (or NaN, by default)
    nonfinite = int(bad.sum())
    both = np.isfinite(r) & np.isfinite(o)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf where both are infinite: masked out below
        diff = np.where(both, np.abs(o - r), 0.0)
    max_abs = float(diff.max(initial=0.0))
    if inf_miss.any():  # the error at a missed infinity is infinite, whatever finite value came out
        max_abs = math.inf
    # relative error only where |ref| is not tiny, so zeros in the reference do not explode it
    finite_ref = np.isfinite(r)
    floor = max(tol.atol if math.isfinite(tol.atol) else 0.0, 1e-6 * float(np.abs(r[finite_ref]).max(initial=0.0)),
                1e-12)
    rel_mask = both & (np.abs(r) > floor)
    max_rel = float((diff[rel_mask] / np.abs(r[rel_mask])).max()) if rel_mask.any() else 0.0
    outside = bad | inf_miss | nan_miss
    if math.isfinite(tol.atol + tol.rtol):
        outside |= both & (diff > tol.atol + tol.rtol * np.abs(np.where(both, r, 0.0)))
    mismatch_fraction = float(outside.sum() / max(outside.size, 1))
    cos = cosine_similarity(np.where(both, o, 0.0), np.where(both, r, 0.0))
    reasons = []
    if nonfinite:
        reasons.append(f"{nonfinite} non-finite values{_where(bad, r, o, ref.shape)}")
    if inf_miss.any():
        reasons.append(f"{int(inf_miss.sum())} of {int(ref_inf.sum())} infinite reference values not matched by the "
                       f"same infinity{_where(inf_miss, r, o, ref.shape)}")
    if nan_miss.any():
        reasons.append(f"{int(nan_miss.sum())} of {int(ref_nan.sum())} expected NaN values came out as numbers"
                       f"{_where(nan_miss, r, o, ref.shape)}")
    if ref_nan.any() and not nan_equal:
        reasons.append(f"the PyTorch reference itself has {int(ref_nan.sum())} NaN values (the model computes NaN on "
                       "this input; against a PyTorch reference a NaN never counts as a match)")
    if mismatch_fraction > tol.max_mismatch_fraction:
        reasons.append(
            f"{mismatch_fraction:.2%} of elements outside atol={tol.atol:g} rtol={tol.rtol:g} (max abs {max_abs:.3g})"
        )
    if cos < tol.min_cosine:
        reasons.append(f"cosine {cos:.6f} < {tol.min_cosine}")
    return OutputComparison(name, not reasons, ", ".join(reasons), max_abs, max_rel, cos, mismatch_fraction, nonfinite)


def _where(mask: np.ndarray, ref: np.ndarray, out: np.ndarray, shape: tuple[int, ...], limit: int = 3) -> str:
    """`` (first at (0, 2): expected -inf, got -3.4e+38; ...)`` for the first ``limit`` positions of ``mask``."""
    flat = np.flatnonzero(mask)[:limit]
    if not len(flat):
        return ""
    shape = shape or (1,)
    parts = [f"{tuple(int(i) for i in np.unravel_index(k, shape))}: expected {ref.flat[k]:.6g}, got {out.flat[k]:.6g}"
             for k in flat]
    return " (first at " + "; ".join(parts) + ")"


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
    """Compare every reference output with the engine's (a PyTorch reference: a NaN never matches).

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


def compare_strict(expected: Mapping[str, Any], out: Mapping[str, Any], tol: ToleranceSpec, *,
                   fp64_ref: Feeds | None = None) -> CompareResult:
    """``compare`` against an expected output that is the spec (ONNX test data).

    Dtypes must match exactly, strings compare exactly, and a NaN matches a NaN at the same
    position (the spec says NaN there: ``Mod``'s fmod of 0, ``Sqrt`` of a negative). Values may be
    non-tensors, as ONNX Runtime's Python API returns them: a sequence is a list of arrays
    (compared element by element as ``name[i]``), an optional is ``None`` (empty) or its value.
    ``fp64_ref`` is accepted for a uniform signature and unused (no FP64 spec).
    """
    results: list[OutputComparison] = []
    for name, ref in expected.items():
        if name in out:
            results += _strict_value(name, ref, out[name], tolerance_for(tol, name))
    return CompareResult(tuple(results), tuple(n for n in expected if n not in out))


def _strict_value(name: str, ref: Any, got: Any, tol: Tolerance) -> list[OutputComparison]:
    if ref is None or got is None:  # an optional: empty must meet empty
        if ref is None and got is None:
            return [OutputComparison(name, True, exact=True)]
        return [OutputComparison(name, False, f"got {_kind(got)}, expected {_kind(ref)}", exact=True)]
    if isinstance(ref, list | tuple) or isinstance(got, list | tuple):
        if not (isinstance(ref, list | tuple) and isinstance(got, list | tuple)) or len(ref) != len(got):
            return [OutputComparison(name, False, f"got {_kind(got)}, expected {_kind(ref)}", exact=True)]
        if not ref:
            return [OutputComparison(name, True, exact=True)]
        pairs = enumerate(zip(ref, got, strict=True))
        return [c for i, (r, g) in pairs for c in _strict_value(f"{name}[{i}]", r, g, tol)]
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.dtype.kind in "OSU" or got.dtype.kind in "OSU":
        same = ref.shape == got.shape and bool(np.array_equal(ref.astype(str), got.astype(str)))
        return [OutputComparison(name, same, "" if same else f"strings differ (got shape {got.shape}, expected "
                                                             f"{ref.shape})", exact=True)]
    if got.dtype != ref.dtype:
        return [OutputComparison(name, False, f"dtype {got.dtype} != expected {ref.dtype}", exact=True)]
    if ref.dtype.name == "bfloat16":  # ONNX's runner allows two bfloat16 ULPs (assert_similar_outputs)
        tol = replace(tol, rtol=max(tol.rtol, 2**-6))
    return [compare_output(name, ref, got, tol, nan_equal=True)]


def _kind(value: Any) -> str:
    if value is None:
        return "an empty optional"
    if isinstance(value, list | tuple):
        return f"a sequence of {len(value)} tensors"
    arr = np.asarray(value)
    return f"a {arr.dtype} tensor of shape {arr.shape}"
