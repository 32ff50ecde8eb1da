"""ModelSpec and KnownFailure: what the harness knows about one model (the registry lives in model_zoo)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

import contextlib
import fnmatch
import hashlib
import inspect
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np

from harness.core.compare import DEFAULT_KEY, DEFAULT_TOLERANCES, ToleranceSpec
from harness.core.errors import HarnessError, ModelSpecError
from harness.core.types import Feeds, Precision, TensorSpec

EXPORTERS = ("torchscript", "dynamo")
"""torch -> ONNX exporters a model may select (``harness.model.export``)."""
DTYPE_KINDS = "biuf"
"""numpy dtype kinds an input may have: bool, signed/unsigned integer, float."""


@dataclass(frozen=True)
class KnownFailure:
    """An expected failure of one model on ``backend:precision`` (``*`` wildcards allowed).

    ``expires`` (a date) or ``until_version`` (engine version at which it should
    be fixed) keep the list from rotting: an expired entry is ignored, and an
    entry whose case passes is reported as ``xpass``.
    """

    reason: str
    link: str = ""
    expires: date | None = None
    until_version: str | None = None
    cause: str = ""
    """Whom the failure is charged to when it is not the engine (``model``: e.g. an ill-conditioned reference);
    empty keeps the observed failure's cause."""

    def active(self, engine_version: str = "", today: date | None = None) -> bool:
        """False once the expiry date or the engine version has been reached."""
        if self.expires is not None and (today or date.today()) > self.expires:
            return False
        if self.until_version and engine_version:
            from packaging.version import InvalidVersion, Version

            try:
                return Version(engine_version.split("+")[0].split("-")[0]) < Version(self.until_version)
            except InvalidVersion:
                return True
        return True


@dataclass(frozen=True)
class ModelSpec:
    """Everything the harness knows about one zoo model."""

    name: str
    factory: Callable[[], nn.Module]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...] | None = None
    """Output names in flattened order; None = named from the forward's structure (``harness.model.reference``)."""
    tags: frozenset[str] = frozenset()
    dynamic_sizes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    tolerances: Mapping[Precision, ToleranceSpec] = field(default_factory=dict)
    known_failures: Mapping[str, KnownFailure] = field(default_factory=dict)
    input_sets: Callable[[np.random.Generator], Mapping[str, Feeds]] | None = None
    calibration: Callable[[int], Sequence[Feeds]] | None = None
    example: Callable[[], Feeds] | None = None
    evaluate: Callable[[Callable[[Feeds], Mapping[str, np.ndarray]]], float] | None = None
    opset: int = 17
    exporter: str = "torchscript"
    source: str = ""
    description: str = ""
    onnx_file: Path | None = None
    """ONNX-native model: this file is the model (no torch module: ``factory`` raises, torch backends are skipped)."""
    golden: Callable[[], Sequence[tuple[Feeds, Feeds]]] | None = None
    """ONNX-native model: ``[(inputs, expected outputs), ...]``, the reference instead of PyTorch FP32."""
    not_runnable: str | None = None
    """Why the harness cannot feed or read this model (e.g. a sequence-typed input): status ``unsupported``."""
    not_comparable: str | None = None
    """Why no engine can reproduce the reference (e.g. a random mask): status ``skipped``."""
    int8_hints: Mapping[str, Any] = field(default_factory=dict)
    """Model-specific inputs to an engine's documented INT8 recipe, e.g. ``ov_ignored_patterns`` (NNCF
    ignored-scope regexes for layers known to be quantization-sensitive). Recorded in the recipe."""
    record_extra: Mapping[str, Any] = field(default_factory=dict)
    """Facts about the model copied into every record's ``extra`` (ONNX cases: op types, opset, case set)."""

    def build(self) -> nn.Module:
        """A fresh module in eval mode, with seeded (reproducible) weights.

        A factory that raises or returns something other than an ``nn.Module`` is the model's fault:
        ``ModelSpecError`` naming the factory's file and line.
        """
        import torch

        where = self.source or getattr(self.factory, "__qualname__", repr(self.factory))
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                module = self.factory()
        except HarnessError:  # the factory's own verdict (e.g. an optional package is missing)
            raise
        except Exception as exc:
            raise ModelSpecError(f"model {self.name!r} ({where}): its factory raised {type(exc).__name__}: {exc}") \
                from exc
        if not isinstance(module, torch.nn.Module):
            raise ModelSpecError(f"model {self.name!r} ({where}): its factory returned {type(module).__name__}, "
                                 "not a torch.nn.Module; return the module (e.g. `return MyNet()`)")
        return module.eval()

    def problems(self) -> list[str]:
        """What is wrong with the declaration (empty when valid): checked at registration, not mid-run."""
        found: list[str] = []
        names = [t.name for t in self.inputs if isinstance(t, TensorSpec)]
        found += [f"inputs[{i}] is a {type(t).__name__}, not a TensorSpec"
                  for i, t in enumerate(self.inputs) if not isinstance(t, TensorSpec)]
        found += [f"input name {n!r} is used twice" for n in sorted({n for n in names if names.count(n) > 1})]
        for t in self.inputs:
            if isinstance(t, TensorSpec):
                found += _tensor_problems(t)
        used = {d for t in self.inputs if isinstance(t, TensorSpec) for d in t.dynamic_axes.values()}
        for axis, sizes in self.dynamic_sizes.items():
            if axis not in used:
                found.append(f"dynamic_sizes names axis {axis!r}, which no input uses (inputs use "
                             f"{sorted(used) or 'no symbolic axis'})")
            if not sizes:
                found.append(f"dynamic_sizes[{axis!r}] is empty: give at least the export size, e.g. (1, 4)")
            bad = [s for s in sizes if not _is_int(s) or s < 1]
            if bad:
                found.append(f"dynamic_sizes[{axis!r}] = {tuple(sizes)}: sizes must be integers >= 1 (got {bad})")
        missing = sorted(used - set(self.dynamic_sizes))
        if missing:
            found.append(f"symbolic axes {missing} need dynamic_sizes")
        if self.outputs is not None:
            outs = list(self.outputs)
            if not outs or not all(isinstance(o, str) and o for o in outs):
                found.append(f"outputs={tuple(outs)}: give non-empty names, or leave outputs out to name them "
                             "automatically")
            found += [f"output name {o!r} is used twice" for o in sorted({o for o in outs if outs.count(o) > 1})]
        if self.onnx_file is None and self.exporter not in EXPORTERS:
            found.append(f"exporter {self.exporter!r} is unknown; known: {', '.join(EXPORTERS)}")
        return found

    def tolerance(self, precision: Precision) -> ToleranceSpec:
        """The model's tolerance at ``precision``, falling back to the defaults."""
        tol = self.tolerances.get(precision, DEFAULT_TOLERANCES[precision])
        if isinstance(tol, Mapping) and DEFAULT_KEY not in tol:
            tol = {DEFAULT_KEY: DEFAULT_TOLERANCES[precision], **tol}
        return tol

    def known_failure(self, backend: str, precision: Precision) -> KnownFailure | None:
        """The known-failure entry matching ``backend:precision``, if any."""
        key = f"{backend}:{precision.value}"
        for pattern, failure in self.known_failures.items():
            if fnmatch.fnmatchcase(key, pattern if ":" in pattern else f"{pattern}:*"):
                return failure
        return None

    def default_sizes(self) -> dict[str, int]:
        """Size of each symbolic axis used for export (the first declared size)."""
        return {axis: sizes[0] for axis, sizes in self.dynamic_sizes.items()}

    def fingerprint(self) -> str:
        """Hash of the factory's source, its file and the declaration: part of every cache key.

        ``ExportedModel.key`` adds the weights and the source files of every class and helper module the
        built module depends on (``harness.model.export.source_files``). The source part is computed once per
        factory object (a reused child runs thousands of cases): a zoo file loaded again is new factory
        objects, and every new process reads the sources anew.
        """
        h = _source_hash(self.factory).copy()
        declared = (self.inputs, self.outputs, self.opset, self.exporter, sorted(self.dynamic_sizes.items()))
        h.update(repr(declared).encode())
        return h.hexdigest()[:16]


_SOURCE_HASHES: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _source_hash(factory: Callable[..., Any]) -> Any:
    """SHA-256 state over the factory's source and its module's source (cached per live factory object)."""
    with contextlib.suppress(KeyError, TypeError):  # TypeError: not weak-referenceable, computed every time
        return _SOURCE_HASHES[factory]
    try:
        src = inspect.getsource(factory)
        module = inspect.getmodule(factory)
        src += inspect.getsource(module) if module else ""
    except (OSError, TypeError):
        src = factory.__qualname__
    h = hashlib.sha256(src.encode())
    with contextlib.suppress(TypeError):
        _SOURCE_HASHES[factory] = h
    return h


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _tensor_problems(t: TensorSpec) -> list[str]:
    """What is wrong with one input's declaration."""
    found: list[str] = []
    if not isinstance(t.name, str) or not t.name:
        found.append(f"input {t!r}: the name must be a non-empty string")
    try:
        kind = np.dtype(t.dtype).kind
    except TypeError:
        found.append(f"input {t.name!r}: dtype {t.dtype!r} is not a numpy dtype; use e.g. float32, float16, "
                     "int64, int32, uint8 or bool")
    else:
        if kind not in DTYPE_KINDS:
            found.append(f"input {t.name!r}: dtype {t.dtype!r} is not a bool, integer or float type")
    if not isinstance(t.shape, tuple):
        found.append(f"input {t.name!r}: shape {t.shape!r} must be a tuple (use () for a 0-d input)")
        return found
    for i, d in enumerate(t.shape):
        if isinstance(d, str):
            if not d:
                found.append(f"input {t.name!r}: dimension {i} is an empty axis name")
        elif not _is_int(d) or d < 1:
            found.append(f"input {t.name!r}: dimension {i} is {d!r}; a dimension is an integer >= 1 or the name "
                         "of a symbolic axis")
    if t.low is not None and t.high is not None and t.low >= t.high:
        found.append(f"input {t.name!r}: low={t.low} must be below high={t.high}")
    return found
