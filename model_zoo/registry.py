"""The model registry: one model = one decorated zero-argument factory."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from harness.core.compare import ToleranceSpec
from harness.core.errors import HarnessError, ModelSpecError
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
    outputs: Sequence[str] | None = None,
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

    Output naming. ``forward`` may return a tensor, a dict (a Hugging Face ``ModelOutput`` too), a
    namedtuple, a tuple or list, nested in any way; the result is flattened depth-first and every engine's
    outputs and every record use these names:

    - a single tensor: ``output``;
    - a tuple/list: ``output_0``, ``output_1``, ... (as exporters name unnamed outputs);
    - a dict: its keys, in insertion order (``{"logits": a}`` -> ``logits``); a namedtuple: its fields;
    - nested containers append ``.<key>`` or ``.<index>``: ``{"logits": a, "hidden": (b, c)}`` ->
      ``logits``, ``hidden.0``, ``hidden.1``; ``(a, (b, c))`` -> ``output_0``, ``output_1.0``, ``output_1.1``;
    - ``None`` items are dropped (the others keep their index: ``(a, None, b)`` -> ``output_0``,
      ``output_2``); a forward returning only ``None`` is a ``ModelError``;
    - Python ``bool``/``int``/``float`` items become 0-d ``bool``/``int64``/``float32`` arrays (a traced
      export freezes them as constants).

    ``outputs=`` renames the flattened outputs by position and must name every one of them.

    The declaration is checked here: an unknown dtype, a dimension below 1, a symbolic axis without sizes,
    an empty or non-positive size list, an axis no input uses, duplicate names or an unknown exporter raise
    ``ModelSpecError`` naming the file and line. The factory runs (seeded) when a case needs the model; one
    that raises or returns no ``nn.Module`` is a ``ModelSpecError`` too. The reference runs twice on one
    input: a forward that differs from itself (dropout left on, ``torch.rand``) is a ``ModelError``.

    Args:
        inputs: input specs in the model's ``forward`` order (a 0-d input has shape ``()``).
        outputs: output names in flattened order; default: named as above.
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

    def decorator(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        model_name = name or fn.__name__
        where = _where(fn)

        def invalid(problems: Sequence[str]) -> ModelSpecError:
            return ModelSpecError(f"model {model_name!r} ({where}): " + "; ".join(problems))

        sizes = {k: tuple(v) if isinstance(v, Iterable) else v for k, v in (dynamic_sizes or {}).items()}
        if bad := [f"dynamic_sizes[{k!r}] = {v!r}: give a tuple of sizes, e.g. (1, 4)"
                   for k, v in sizes.items() if not isinstance(v, tuple)]:
            raise invalid(bad)
        try:
            precisions = {Precision.parse(str(k)): v for k, v in (tolerances or {}).items()}
        except ValueError as exc:
            raise invalid([str(exc)]) from None
        spec = ModelSpec(
            name=model_name,
            factory=fn,
            inputs=inputs,
            outputs=None if outputs is None else (outputs,) if isinstance(outputs, str) else tuple(outputs),
            tags=frozenset(tags),
            dynamic_sizes=sizes,
            tolerances=precisions,
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
        if problems := spec.problems():
            raise invalid(problems)
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


