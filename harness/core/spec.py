"""ModelSpec and KnownFailure: what the harness knows about one model (the registry lives in model_zoo)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

import fnmatch
import hashlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np

from harness.core.compare import DEFAULT_KEY, DEFAULT_TOLERANCES, ToleranceSpec
from harness.core.types import Feeds, Precision, TensorSpec


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
    outputs: tuple[str, ...] = ("output",)
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
        """A fresh module in eval mode, with seeded (reproducible) weights."""
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module = self.factory()
        return module.eval()

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
        """Hash of the factory's source and declared inputs: part of every cache key."""
        try:
            src = inspect.getsource(self.factory)
            module = inspect.getmodule(self.factory)
            src += inspect.getsource(module) if module else ""
        except (OSError, TypeError):
            src = self.factory.__qualname__
        h = hashlib.sha256(src.encode())
        h.update(repr((self.inputs, self.outputs, self.opset, self.exporter, sorted(self.dynamic_sizes.items()))).encode())
        return h.hexdigest()[:16]
