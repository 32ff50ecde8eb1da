"""torch -> ONNX export, cached by content hash, plus the cache helper backends use.

Default exporter: the TorchScript-based ``torch.onnx.export(dynamo=False)`` at
opset 17. It is the path that supports ``autograd.Function.symbolic`` custom
ops (the dynamic-scale SRCNN), exports every zoo model here, keeps weights in
one file, and is the trace pnnx also consumes. The dynamo exporter is per-model
selectable (``exporter="dynamo"``) and covered by the export suite; it always
emits opset 18 first and was seen to keep 18 silently when asked for 17.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shutil
import sys
import sysconfig
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.core.cache import cache_root, cached, sha256_file
from harness.core.errors import ExportError

if TYPE_CHECKING:
    from torch import nn

    from harness.core.spec import ModelSpec


@dataclass(frozen=True)
class OnnxExport:
    """An ONNX file exported from a zoo model and what happened on the way."""

    path: Path
    exporter: str
    opset: int
    seconds: float
    warnings: tuple[str, ...] = ()
    checker: str = "ok"
    cached: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form for records."""
        d = asdict(self)
        d["path"] = str(self.path)
        return d


@dataclass
class ExportedModel:
    """One zoo model with its cache directory; the ONNX export happens on first use.

    Backends that need ONNX read ``onnx_path``; backends that convert from torch
    (pnnx, OpenVINO's torch frontend, the eager reference) call ``module()``.
    Derived artifacts go to ``artifact(name)`` and should be built through ``cached``.
    """

    spec: ModelSpec
    root: Path = field(default_factory=cache_root)
    exporter: str | None = None
    opset: int | None = None

    @cached_property
    def _module(self) -> nn.Module:
        return self.spec.build()

    def module(self) -> nn.Module:
        """The seeded torch module (built once)."""
        return self._module

    @cached_property
    def key(self) -> str:
        """Content hash of everything an export depends on: the declaration, the source of every class and
        project module the built module uses (``source_files``), the weights, export settings, torch version."""
        if self.spec.onnx_file is not None:  # ONNX-native: the shipped file is the weights and the graph
            return hashlib.sha256(f"{self.spec.fingerprint()}|{sha256_file(Path(self.spec.onnx_file))}".encode()
                                  ).hexdigest()[:20]
        import torch

        h = hashlib.sha256(self.spec.fingerprint().encode())
        # names and contents, not paths: one cache serves every checkout and virtual environment
        sources = sorted((p.name, hashlib.sha256(p.read_bytes()).hexdigest())
                         for p in source_files(self.module(), self.spec.factory))
        h.update(repr(sources).encode())
        for name, tensor in self.module().state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        h.update(f"{torch.__version__}|{self.exporter or self.spec.exporter}|{self.opset or self.spec.opset}".encode())
        return h.hexdigest()[:20]

    @cached_property
    def cache_dir(self) -> Path:
        """Directory of this model's artifacts (fixed by the root and the key, both fixed once read)."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", self.spec.name).lstrip("._-")[:80] or "model"
        return self.root / "artifacts" / f"{safe}-{self.key}"  # a model name never becomes a path

    def artifact(self, name: str) -> Path:
        """Path of a derived artifact in this model's cache directory."""
        return self.cache_dir / name

    @cached_property
    def onnx(self) -> OnnxExport:
        """The ONNX export (from the cache when a verified copy exists). Raises ExportError."""
        if self.spec.onnx_file is not None:
            return native_onnx(self)
        return export_onnx(self)

    @property
    def onnx_path(self) -> Path:
        """Path of the exported ONNX file."""
        return self.onnx.path

    def example_feeds(self) -> dict[str, Any]:
        """Feeds of the export example: for backends that need one run at build time (profiling, tracing)."""
        from harness.model.inputs import export_example

        return export_example(self.spec)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.spec.inputs]

    @property
    def output_names(self) -> list[str]:
        """Output names every consumer uses: the declared ``outputs``, else named by OUTPUT_NAMING from one
        forward pass on the export example (cached beside the artifacts)."""
        if self.spec.outputs is not None:
            return list(self.spec.outputs)
        return list(self._output_info["names"])

    def traceable(self) -> nn.Module:
        """The module exporters and tracers get: itself when it returns a tensor or a flat tuple of tensors,
        else wrapped to return the flattened outputs (``reference.flat_module``) in ``output_names`` order."""
        from harness.model.reference import flat_module

        return self.module() if self._output_info["plain"] else flat_module(self.module(), self.input_names)

    @cached_property
    def _output_info(self) -> dict[str, Any]:
        if self.spec.onnx_file is not None:
            import onnx

            graph = onnx.load(str(self.spec.onnx_file), load_external_data=False).graph
            return {"names": [o.name for o in graph.output], "plain": True}

        def discover() -> dict[str, Any]:
            from harness.model.reference import output_structure

            names, plain = output_structure(self.module(), self.example_feeds(), self.input_names)
            return {"names": names, "plain": plain}

        return cached_json(self.artifact("outputs.json"), discover)


def native_onnx(model: ExportedModel) -> OnnxExport:
    """An ONNX-native model's own file, copied into its cache dir (engines write profiles and IR beside it)."""
    import onnx

    src = Path(model.spec.onnx_file or "")
    if not src.is_file():
        raise ExportError(f"ONNX-native model {model.spec.name}: its file {src} does not exist")
    path = cached(model.artifact("model-native.onnx"), lambda tmp: shutil.copyfile(src, tmp))
    opset = next((o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                  if o.domain in ("", "ai.onnx")), 0)
    return OnnxExport(path, "onnx-native", opset, 0.0, cached=True)


def export_onnx(model: ExportedModel) -> OnnxExport:
    """Export ``model`` to ONNX with its spec's exporter and opset, cached and checked."""
    exporter = model.exporter or model.spec.exporter
    opset = model.opset or model.spec.opset
    path = model.artifact(f"model-{exporter}-op{opset}.onnx")
    meta_path = path.with_suffix(".json")
    log: dict[str, Any] = {}

    def build(tmp: Path) -> None:
        start = time.perf_counter()
        log["warnings"] = _export(model, tmp, exporter, opset)
        log["seconds"] = time.perf_counter() - start
        log["checker"] = _check(tmp)
        import onnx

        log["opset"] = next((o.version for o in onnx.load(str(tmp), load_external_data=False).opset_import
                             if o.domain in ("", "ai.onnx")), opset)
        # written under the artifact's lock, before the export is renamed into place: whoever sees the
        # export sees its metadata
        tmp_meta = tmp.with_suffix(".json")
        tmp_meta.write_text(json.dumps(log))
        tmp_meta.replace(meta_path)

    cached(path, build)
    fresh = bool(log)
    if not fresh and not isinstance(log := _read_json(meta_path), dict):
        # missing, empty or corrupt metadata (a crash, an older cache, an edit): rebuild, never fail every run
        path.with_name(path.name + ".sha256").unlink(missing_ok=True)
        log = {}
        cached(path, build)
        fresh = True
    return OnnxExport(path, exporter, int(log.get("opset", opset)), float(log.get("seconds", 0.0)),
                      tuple(log.get("warnings", ())), str(log.get("checker", "unknown")), not fresh)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _export(model: ExportedModel, path: Path, exporter: str, opset: int) -> list[str]:
    import torch

    from harness.model.inputs import export_example
    from harness.model.reference import mha_fastpath_disabled, run_torch

    spec = model.spec
    example = export_example(spec)
    args = tuple(torch.from_numpy(np.asarray(example[t.name], order="C")) for t in spec.inputs)
    names = model.output_names
    module = model.traceable()
    dynamic_axes: dict[str, dict[int, str]] = {t.name: t.dynamic_axes for t in spec.inputs if t.dynamic_axes}
    if dynamic_axes:  # outputs follow the inputs' dynamic sizes: let every output axis be free
        outs = run_torch(model.module(), example, model.input_names, names)
        for name in names:
            if outs[name].ndim:
                dynamic_axes[name] = {i: f"{name}_dim{i}" for i in range(outs[name].ndim)}
    caught: list[str] = []
    stderr = io.StringIO()
    try:
        with warnings.catch_warnings(record=True) as records, contextlib.redirect_stderr(stderr), torch.no_grad(), \
                mha_fastpath_disabled():
            warnings.simplefilter("always")
            kwargs: dict[str, Any] = dict(input_names=[t.name for t in spec.inputs], output_names=names,
                                          opset_version=opset, dynamic_axes=dynamic_axes or None)
            if exporter == "dynamo":
                with fresh_rnn_dispatch():
                    torch.onnx.export(module, args, str(path), dynamo=True, external_data=False, **kwargs)
            elif exporter == "torchscript":
                torch.onnx.export(module, args, str(path), dynamo=False, **kwargs)
            else:
                raise ExportError(f"unknown exporter {exporter!r}; known: torchscript, dynamo")
        caught = sorted({f"{w.category.__name__}: {w.message}" for w in records})
    except ExportError:
        raise
    except Exception as exc:
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # the dynamo exporter colours its report for terminals
        raise ExportError(f"torch.onnx.export ({exporter}, opset {opset}) failed: {type(exc).__name__}: {message}") \
            from exc
    return caught


RNN_OPS = ("lstm", "gru")
"""aten ops (``.input`` overloads) whose Python kernel the dynamo exporter swaps while it captures a graph
with dynamic shapes (``torch.export._patches``: a ``while_loop`` decomposition that keeps the time axis
symbolic, instead of the default one that unrolls it over the example's length)."""


@contextlib.contextmanager
def fresh_rnn_dispatch() -> Iterator[None]:
    """Empty the Python dispatch caches of ``RNN_OPS`` before and after the block (a dynamo export).

    The exporter swaps the ops' ``py_kernels`` without clearing ``OpOverload._dispatch_cache`` (torch 2.13;
    ``py_impl`` would clear it), and its own passes after the capture cache the default unrolling kernel
    under ``AutogradCPU``. The next dynamo export of an LSTM or GRU in the same process then gets that
    cached kernel instead of the ``while_loop`` one, specialises the sequence axis to the example's length
    and fails ("tracing inferred a static shape"): a second export in a reused child or ``--in-process``.
    """
    def clear() -> None:
        import torch

        for name in RNN_OPS:
            cache = getattr(getattr(getattr(torch.ops.aten, name, None), "input", None), "_dispatch_cache", None)
            if isinstance(cache, dict):
                cache.clear()

    clear()
    try:
        yield
    finally:
        clear()  # a failed capture can leave the while_loop kernel cached for whatever traces an RNN next


def _check(path: Path) -> str:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejected the export: {exc}") from exc
    return "ok"


def cached_json(path: Path, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A small JSON artifact built by ``make()`` through the cache; an unreadable copy is rebuilt once."""
    for _ in range(2):
        cached(path, lambda tmp: tmp.write_text(json.dumps(make())))
        if isinstance(data := _read_json(path), dict):
            return data
        path.with_name(path.name + ".sha256").unlink(missing_ok=True)
    return make()


_INFRA = ("model_zoo", "model_zoo.registry", "model_zoo.lookup", "model_zoo.listing", "model_zoo.catalog")
"""The harness's own modules: what a model is registered with, not what it computes (never hashed)."""


def source_files(module: nn.Module, factory: Callable[..., Any]) -> list[Path]:
    """Source files a built module depends on, for the cache key.

    Seeds: the factory's module and the module of every class (and base class) in ``module.modules()``.
    Project modules (not stdlib, not site-packages) are followed through their globals (imported modules,
    functions, classes), so a forward in a helper file, or a helper of that helper, is covered. Library files
    reached this way are hashed but not followed; torch (its version is in the key), the stdlib and the
    harness itself are skipped. Imports inside function bodies are not seen.
    """
    paths = sysconfig.get_paths()
    stdlib = tuple(str(Path(paths[k]).resolve()) for k in ("stdlib", "platstdlib") if k in paths)
    libs = tuple(str(Path(paths[k]).resolve()) for k in ("purelib", "platlib") if k in paths)
    queue = [getattr(factory, "__module__", None)]
    queue += [cls.__module__ for m in module.modules() for cls in type(m).__mro__]
    seen: set[str] = set()
    files: set[Path] = set()
    while queue:
        name = queue.pop()
        if not isinstance(name, str) or name in seen:
            continue
        seen.add(name)
        if name.split(".")[0] in ("torch", "builtins", "harness") or name in _INFRA:
            continue
        mod = sys.modules.get(name)
        file = getattr(mod, "__file__", None)
        if mod is None or not file or not file.endswith(".py"):
            continue
        path = Path(file).resolve()
        library = str(path).startswith(libs) or not {"site-packages", "dist-packages"}.isdisjoint(path.parts)
        if str(path).startswith(stdlib) and not library:
            continue
        files.add(path)
        if library:
            continue
        for value in vars(mod).values():
            if isinstance(value, ModuleType):
                queue.append(value.__name__)
            elif isinstance(value, type) or callable(value):
                queue.append(getattr(value, "__module__", None))
    return sorted(files)
