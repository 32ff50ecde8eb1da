"""The model registry: one model = one decorated zero-argument factory."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from harness.core.compare import ToleranceSpec
from harness.core.errors import HarnessError
from harness.core.spec import KnownFailure, ModelSpec
from harness.core.types import Feeds, Precision, Status, TensorSpec

if TYPE_CHECKING:
    import numpy as np
    from torch import nn


ONNX_CASE_PREFIX = "onnx:"
"""``onnx:<case id>`` names one of ONNX's backend test cases as a model (``harness.model.onnx_files``)."""
_MODELS: dict[str, ModelSpec] = {}
_UNAVAILABLE: dict[str, str] = {}


class ModelUnavailable(HarnessError):
    """A known model that cannot be built here (an optional package is missing); cases record ``skipped``."""

    status = Status.SKIPPED


def mark_unavailable(name: str, reason: str) -> None:
    """Record that optional model ``name`` exists but cannot be built here, and why (the skip reason)."""
    _UNAVAILABLE[name] = reason


def register_model(
    inputs: Iterable[TensorSpec],
    *,
    outputs: Sequence[str] = ("output",),
    tags: Iterable[str] = (),
    dynamic_sizes: Mapping[str, Sequence[int]] | None = None,
    tolerances: Mapping[Precision | str, ToleranceSpec] | None = None,
    known_failures: Mapping[str, KnownFailure | str] | None = None,
    input_sets: Callable[[np.random.Generator], Mapping[str, Feeds]] | None = None,
    calibration: Callable[[int], Sequence[Feeds]] | None = None,
    example: Callable[[], Feeds] | None = None,
    evaluate: Callable[[Callable[[Feeds], Mapping[str, np.ndarray]]], float] | None = None,
    opset: int = 17,
    exporter: str = "torchscript",
    name: str | None = None,
    int8_hints: Mapping[str, Any] | None = None,
) -> Callable[[Callable[[], nn.Module]], Callable[[], nn.Module]]:
    """Register a zero-argument factory returning an ``nn.Module`` as a zoo model.

    Args:
        inputs: input specs in the model's ``forward`` order.
        outputs: output names, in order.
        tags: free-form labels (``ci``, ``vision``, ...) selectable with ``--tag``.
        dynamic_sizes: sizes to test for each symbolic axis; the first is the export size.
        tolerances: per-precision overrides; a value may map output names to tolerances.
        known_failures: ``"backend:precision"`` (wildcards allowed) -> reason or KnownFailure.
        input_sets: domain inputs: ``rng -> {set_name: feeds}`` used instead of random normal.
        calibration: ``count -> [feeds, ...]`` INT8 calibration data from the model's domain.
        example: ``() -> feeds`` to trace/export with (default: seeded uniform [0, 1) at default sizes).
        evaluate: task metric: called with a ``run(feeds) -> outputs`` function of any engine session,
            returns e.g. held-out accuracy; the accuracy suite records it per backend x precision.
        opset: ONNX opset to export at.
        exporter: ``torchscript`` (torch.onnx.export dynamo=False) or ``dynamo``.
        name: registry name; defaults to the function name.
        int8_hints: model-specific inputs to the engines' documented INT8 recipes, e.g.
            ``{"ov_ignored_patterns": [r".*/output/dense/MatMul"]}`` (NNCF ignored scope).
    """
    inputs = tuple(inputs)
    declared = {d for spec in inputs for d in spec.dynamic_axes.values()}
    sizes = {k: tuple(v) for k, v in (dynamic_sizes or {}).items()}

    def decorator(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        model_name = name or fn.__name__
        where = _where(fn)
        undeclared = declared - set(sizes)
        if undeclared:
            raise HarnessError(f"model {model_name!r} ({where}): symbolic axes {sorted(undeclared)} need dynamic_sizes")
        spec = ModelSpec(
            name=model_name,
            factory=fn,
            inputs=inputs,
            outputs=tuple(outputs),
            tags=frozenset(tags),
            dynamic_sizes=sizes,
            tolerances={Precision.parse(str(k)): v for k, v in (tolerances or {}).items()},
            known_failures={
                k: v if isinstance(v, KnownFailure) else KnownFailure(str(v)) for k, v in (known_failures or {}).items()
            },
            input_sets=input_sets,
            calibration=calibration,
            example=example,
            evaluate=evaluate,
            opset=opset,
            exporter=exporter,
            int8_hints=dict(int8_hints or {}),
            source=where,
            description=(inspect.getdoc(fn) or "").split("\n")[0],
        )
        add_model(spec)
        return fn

    return decorator


def add_model(spec: ModelSpec) -> None:
    """Add a spec; a second model of the same name is an error naming both places."""
    existing = _MODELS.get(spec.name)
    if existing is not None and existing.source != spec.source:
        raise HarnessError(
            f"duplicate model name {spec.name!r}: defined at {spec.source} and already at {existing.source}; rename one"
        )
    _MODELS[spec.name] = spec


def _where(fn: Callable[..., Any]) -> str:
    try:
        return f"{inspect.getsourcefile(fn)}:{inspect.getsourcelines(fn)[1]}"
    except (OSError, TypeError):
        return f"{fn.__module__}.{fn.__qualname__}"


