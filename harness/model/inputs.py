"""Seeded input sets for comparison and calibration.

Comparison never uses the export example: the model is traced on a uniform
[0, 1) tensor (seed 12345) and compared on seeded normal data, edge values
(zeros, ones, large magnitude) and every declared dynamic size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from harness.core.types import Feeds, TensorSpec

if TYPE_CHECKING:
    from harness.core.spec import ModelSpec

EXPORT_SEED = 12345
COMPARE_SEED = 1
CALIBRATION_SEED = 1000
LARGE_MAGNITUDE = 10.0


@dataclass(frozen=True)
class InputSet:
    """Named feeds. ``in_distribution`` sets are the ones INT8 verdicts use:
    edge values outside the calibration range measure clipping, not the engine."""

    name: str
    feeds: Mapping[str, np.ndarray]
    in_distribution: bool = True


def _tensor(spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator, kind: str) -> np.ndarray:
    # numpy returns scalars, not 0-d arrays, for shape (): engines need an ndarray of the declared rank
    return np.asarray(_values(spec, shape, rng, kind), dtype=spec.dtype)


def _values(spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator, kind: str) -> np.ndarray:
    if spec.is_integer:
        low = int(spec.low if spec.low is not None else 0)
        high = int(spec.high if spec.high is not None else 2)
        if kind == "zeros":
            return np.full(shape, low, dtype=spec.dtype)
        return rng.integers(low, high, size=shape).astype(spec.dtype)
    if kind == "zeros":
        return np.zeros(shape, spec.dtype)
    if kind == "ones":
        return np.ones(shape, spec.dtype)
    if kind == "uniform":
        x = rng.random(shape)
    else:
        x = rng.standard_normal(shape) * (LARGE_MAGNITUDE if kind == "large" else 1.0)
    if spec.low is not None or spec.high is not None:
        x = np.clip(x, spec.low, spec.high)
    return x.astype(spec.dtype)


def as_arrays(feeds: Mapping[str, object]) -> dict[str, np.ndarray]:
    """A model's own feeds (``example``, ``input_sets``, ``calibration``) as arrays: a Python or numpy scalar
    becomes a 0-d array."""
    return {k: v if isinstance(v, np.ndarray) else np.asarray(v) for k, v in feeds.items()}


def make_feeds(spec: ModelSpec, rng: np.random.Generator, kind: str = "normal",
               sizes: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """One feed dict: ``kind`` is normal, uniform, zeros, ones or large."""
    sizes = {**spec.default_sizes(), **(sizes or {})}
    return {t.name: _tensor(t, t.concrete_shape(sizes), rng, kind) for t in spec.inputs}


def export_example(spec: ModelSpec) -> dict[str, np.ndarray]:
    """The tensor the model is traced with (never used for comparison)."""
    if spec.example is not None:
        return as_arrays(spec.example())
    return make_feeds(spec, np.random.default_rng(EXPORT_SEED), "uniform")


def dynamic_variants(spec: ModelSpec) -> list[dict[str, int]]:
    """Non-default sizes to test: each extra size of each axis, the others at default."""
    defaults = spec.default_sizes()
    variants = []
    for axis, sizes in spec.dynamic_sizes.items():
        for size in sizes[1:]:
            variants.append({**defaults, axis: size})
    return variants


def input_sets(spec: ModelSpec, seed: int = COMPARE_SEED) -> list[InputSet]:
    """The comparison inputs of a model: domain or random data, edge values, dynamic sizes."""
    rng = np.random.default_rng(seed)
    sets: list[InputSet] = []
    if spec.input_sets is not None:
        sets += [InputSet(name, as_arrays(feeds)) for name, feeds in spec.input_sets(rng).items()]
    else:
        sets += [InputSet("random", make_feeds(spec, rng)), InputSet("random-2", make_feeds(spec, rng))]
    if any(not t.is_integer for t in spec.inputs):
        sets += [InputSet(kind, make_feeds(spec, rng, kind), in_distribution=False)
                 for kind in ("zeros", "ones", "large")]
    for sizes in dynamic_variants(spec):
        label = ",".join(f"{k}={v}" for k, v in sizes.items())
        sets.append(InputSet(f"random[{label}]", make_feeds(spec, rng, sizes=sizes)))
    return sets


def calibration_set(spec: ModelSpec, count: int = 16, seed: int = CALIBRATION_SEED) -> Sequence[Feeds]:
    """INT8 calibration feeds: the model's own domain data when declared, else seeded normal."""
    if spec.calibration is not None:
        return [as_arrays(feeds) for feeds in spec.calibration(count)]
    rng = np.random.default_rng(seed)
    return [make_feeds(spec, rng) for _ in range(count)]
