"""The model registry: one model = one decorated zero-argument factory."""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.compare import DEFAULT_KEY, DEFAULT_TOLERANCES, ToleranceSpec
from harness.errors import HarnessError, UnknownNameError
from harness.types import Feeds, Precision, Status, TensorSpec

if TYPE_CHECKING:
    import numpy as np
    from torch import nn


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


_MODELS: dict[str, ModelSpec] = {}
_UNAVAILABLE: dict[str, str] = {}


class ModelUnavailable(HarnessError):
    """A known model that cannot be built here (an optional package is missing); cases record ``skipped``."""

    status = Status.SKIPPED


def mark_unavailable(name: str, reason: str) -> None:
    """Record that optional model ``name`` exists but cannot be built here, and why (the skip reason)."""
    _UNAVAILABLE[name] = reason


def unavailable_models() -> dict[str, str]:
    """Optional models not registered on this machine -> the reason (what to install)."""
    _load_builtin()
    return dict(_UNAVAILABLE)


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


def _load_builtin() -> None:
    import model_zoo.builtin  # noqa: F401 - registers the built-in zoo


def get_model(name: str) -> ModelSpec:
    """The spec of one model; unknown names raise with the closest known ones."""
    _load_builtin()
    if name in _UNAVAILABLE and name not in _MODELS:
        raise ModelUnavailable(_UNAVAILABLE[name])
    if ":" in name and name not in _MODELS:  # catalog specs: torchvision:NAME, timm:NAME
        from model_zoo.catalog import resolve

        add_model(resolve(name))
    try:
        return _MODELS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, _MODELS, n=5, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownNameError(
            f"unknown model {name!r}{hint} Known models: {', '.join(sorted(_MODELS))}. "
            "Add one with @register_model or --zoo-file."
        ) from None


def list_models(patterns: str | Iterable[str] = "*", tags: Iterable[str] = ()) -> list[str]:
    """Sorted names matching any shell-style pattern and carrying every tag in ``tags``."""
    _load_builtin()
    pats = [patterns] if isinstance(patterns, str) else list(patterns) or ["*"]
    want = set(tags)
    return sorted(
        n for n, s in _MODELS.items() if any(fnmatch.fnmatchcase(n, p) for p in pats) and want <= s.tags
    )


def load_zoo_file(path: str | Path) -> list[str]:
    """Import a user's Python file so its ``@register_model`` functions join the zoo.

    The file is executed: it is trusted input, like a conftest.py. Returns the
    names it registered. Errors name the file and line.
    """
    _load_builtin()
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise HarnessError(f"--zoo-file {path}: no such file (looked at {file})")
    before = set(_MODELS)
    mod_name = f"_harness_zoo_{hashlib.sha1(str(file).encode()).hexdigest()[:10]}"
    if mod_name in sys.modules:
        return sorted(n for n, s in _MODELS.items() if s.source.startswith(str(file)))
    spec = importlib.util.spec_from_file_location(mod_name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except HarnessError as exc:
        del sys.modules[mod_name]
        raise HarnessError(f"--zoo-file {file}: {exc}") from exc
    except Exception as exc:
        del sys.modules[mod_name]
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(file)]
        line = f":{frames[-1].lineno}" if frames else ""
        raise HarnessError(f"--zoo-file {file}{line}: importing it raised {type(exc).__name__}: {exc}") from exc
    added = sorted(set(_MODELS) - before)
    if not added:
        raise HarnessError(f"--zoo-file {file}: it registered no model (decorate factories with @register_model)")
    return added
