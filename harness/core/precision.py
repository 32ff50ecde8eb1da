"""The precision audit: turning what an engine reports into ``executed_precision``.

Backends read back per-layer (or per-kernel) data types from the engine and
call ``summarize``; ``precision_match`` then decides whether the requested
precision really ran. Components tagged ``-storage`` (weights kept in fp16,
computed in fp32) do not count as computing at that precision.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping

from harness.core.types import Precision

_ALIASES = {
    "float": "fp32", "float32": "fp32", "f32": "fp32", "fp32": "fp32",
    "float16": "fp16", "half": "fp16", "f16": "fp16", "fp16": "fp16", "mlfloat16": "fp16",
    "bfloat16": "bf16", "bf16": "bf16",
    "int8": "int8", "uint8": "int8", "i8": "int8", "u8": "int8", "u1": "int8", "int4": "int4", "u4": "int4",
    "i4": "int4", "float64": "fp64", "double": "fp64", "f64": "fp64",
}


def normalize(dtype: str) -> str:
    """Map an engine's type name (``float16``, ``f16``, ``u8``...) to fp32/fp16/bf16/int8."""
    key = dtype.strip().lower().replace("tensor(", "").rstrip(")")
    return _ALIASES.get(key, key)


def summarize(counts: Mapping[str, int] | Counter[str], storage: str | None = None) -> str:
    """``fp32`` when one type computed everything, else ``mixed(int8 71%,fp32 29%)``.

    ``counts`` maps a compute type to the number of compute layers (or their
    share of work) that ran in it; ``storage`` adds a ``<type>-storage`` tag for
    weights stored at a lower precision than they were computed in.
    """
    total = sum(counts.values())
    merged: Counter[str] = Counter()
    for dtype, n in counts.items():
        merged[normalize(dtype)] += n
    merged = Counter({k: v for k, v in merged.items() if v > 0})
    if not merged:
        return "unknown"
    if len(merged) == 1 and storage is None:
        return next(iter(merged))
    parts = [f"{k} {v / total:.0%}" for k, v in merged.most_common()] if len(merged) > 1 else [
        f"{next(iter(merged))}-compute"]
    if storage is not None:
        parts.insert(0, f"{normalize(storage)}-storage")
    return f"mixed({','.join(parts)})"


def compute_types(executed: str) -> set[str]:
    """The types that did arithmetic, parsed from an ``executed_precision`` string."""
    if executed.startswith("mixed(") and executed.endswith(")"):
        items = executed[len("mixed("):-1].split(",")
    else:
        items = [executed]
    out = set()
    for item in items:
        name = item.strip().split(" ")[0]
        if name.endswith("-storage"):
            continue
        out.add(normalize(re.sub(r"-compute$", "", name)))
    return out


FLOAT_TYPES = frozenset({"fp64", "fp32", "fp16", "bf16"})
"""Types whose arithmetic a float precision request is about; integer kernels (indices, counters,
bit shifts, masks) are the model's own integer arithmetic, not a precision downgrade."""


def precision_match(requested: Precision, executed: str) -> str:
    """``exact`` (only the requested type computed), ``partial`` (it and others), ``fallback`` (not it),
    or ``unknown`` (the engine reported nothing).

    For a float request (fp32, fp16) only float kernels count: a model whose float arithmetic all ran
    at the requested type is ``exact`` whatever integer kernels ran beside it. An fp32 request on a
    model with no float arithmetic at all is ``exact`` (nothing could be downgraded); an fp16 or int8
    request with no kernel of that type is ``fallback``.
    """
    if executed in ("", "unknown"):
        return "unknown"
    types = compute_types(executed)
    if requested is not Precision.INT8:
        floats = types & FLOAT_TYPES
        if not floats:
            return "exact" if requested is Precision.FP32 else "fallback"
        types = floats
    if requested.value not in types:
        return "fallback"
    return "exact" if types == {requested.value} else "partial"
