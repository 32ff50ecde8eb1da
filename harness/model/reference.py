"""PyTorch references: FP32 eager outputs (the verdict's reference) and FP64 (the error floor)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.core.errors import ModelError
from harness.core.types import Feeds

if TYPE_CHECKING:
    from torch import nn

    from harness.model.export import ExportedModel


@contextlib.contextmanager
def mha_fastpath_disabled() -> Iterator[None]:
    """Run transformer layers through their standard ops, not the fused inference fast path.

    The fused ``_transformer_encoder_layer_fwd`` cannot be exported (ONNX, pnnx)
    and breaks dynamically quantized Linear layers; the reference and every
    tracer see the same decomposed graph.
    """
    import torch

    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


OUTPUT_NAMING = """\
Output naming (every engine, every record). The forward's result is flattened depth-first:
a tensor is one output; a dict (Hugging Face ModelOutput included) contributes its values in insertion
order, named by key; a namedtuple by field name; a tuple or list by position. A top-level single tensor is
``output``; top-level tuple items are ``output_0``, ``output_1``, ...; nested items append ``.<key>`` or
``.<index>`` (``{"logits": a, "hidden": (b, c)}`` -> ``logits``, ``hidden.0``, ``hidden.1``). ``None``
items are dropped (the others keep their index). Python bool/int/float become 0-d bool/int64/float32
arrays. Declared ``outputs=`` names replace these names by position and must be as many."""


def output_leaves(outs: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """``(name, value)`` for every non-None leaf of a forward's result, in the order of OUTPUT_NAMING."""
    if outs is None:
        return
    if isinstance(outs, Mapping):
        items: Iterable[tuple[Any, Any]] = outs.items()
    elif isinstance(outs, tuple) and hasattr(outs, "_fields"):  # namedtuple: its fields are the keys
        items = zip(outs._fields, outs, strict=True)
    elif isinstance(outs, tuple | list):
        items = ((f"output_{i}" if not path else i, v) for i, v in enumerate(outs))
    else:
        yield (path or "output", outs)
        return
    for key, value in items:
        yield from output_leaves(value, f"{path}.{key}" if path else str(key))


def to_numpy(name: str, value: Any) -> np.ndarray:
    """One output leaf as a host array (tensors copied; Python scalars 0-d); ModelError for anything else."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy().copy()
    if isinstance(value, bool | int | float | np.ndarray | np.generic):
        return np.array(value, dtype=_SCALAR_DTYPES.get(type(value)))
    raise ModelError(f"output {name!r} is a {type(value).__name__}: the harness compares tensors, Python "
                     "numbers, and dicts/tuples/lists of them; return a tensor (or drop it from the outputs)")


_SCALAR_DTYPES: dict[type, Any] = {bool: np.bool_, int: np.int64, float: np.float32}


def flatten_outputs(outs: Any, output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """A forward's result as named host arrays: names from OUTPUT_NAMING, or ``output_names`` by position."""
    leaves = list(output_leaves(outs))
    names = [n for n, _ in leaves]
    if not leaves:
        raise ModelError("the model returned no output (None, or only None items); return at least one tensor")
    if len(set(names)) != len(names):
        raise ModelError(f"the model's outputs flatten to duplicate names {names}; rename the dict keys")
    if output_names is not None:
        if len(output_names) != len(leaves):
            raise ModelError(f"the model returned {len(leaves)} outputs {names} but declares {len(output_names)}: "
                             f"{list(output_names)}; declare {len(leaves)} names or leave outputs= out to use "
                             "these names")
        names = list(output_names)
    return {n: to_numpy(auto, v) for n, (auto, v) in zip(names, leaves, strict=True)}


def run_torch(module: nn.Module, feeds: Feeds, input_names: Sequence[str], output_names: Sequence[str] | None = None,
              dtype: str | None = None) -> dict[str, np.ndarray]:
    """Run a torch module on host arrays; float inputs are cast to ``dtype`` when given.

    Outputs are flattened and named as OUTPUT_NAMING says (``output_names`` rename them by position).
    """
    import torch

    args = []
    for name in input_names:
        # asarray(order="C") keeps a 0-d input 0-d (ascontiguousarray would make it 1-d)
        t = torch.from_numpy(np.asarray(feeds[name], order="C"))
        if dtype is not None and t.is_floating_point():
            t = t.to(getattr(torch, dtype))
        args.append(t)
    with torch.inference_mode(), mha_fastpath_disabled():
        outs = module(*args)
    return flatten_outputs(outs, output_names)


def output_structure(module: nn.Module, feeds: Feeds, input_names: Sequence[str]) -> tuple[list[str], bool]:
    """One forward pass: the outputs' names (OUTPUT_NAMING) and whether they are *plain* (a tensor or a flat
    tuple/list of tensors, which every exporter flattens the same way without help)."""
    import torch

    args = [torch.from_numpy(np.asarray(feeds[n], order="C")) for n in input_names]
    try:
        with torch.inference_mode(), mha_fastpath_disabled():
            outs = module(*args)
    except Exception as exc:
        raise ModelError(f"the PyTorch model raised on its export example: {type(exc).__name__}: {exc}") from exc
    names = list(flatten_outputs(outs))
    plain = isinstance(outs, torch.Tensor) or (
        isinstance(outs, tuple | list) and all(isinstance(o, torch.Tensor) for o in outs))
    return names, plain


def flat_module(module: nn.Module, input_names: Sequence[str]) -> nn.Module:
    """``module`` wrapped to return its outputs as one flat tuple of tensors in OUTPUT_NAMING order.

    Exporters and tracers (torch.onnx, torch.jit.trace for pnnx) reject or reorder dicts, drop or choke on
    None and cannot emit Python numbers; the wrapper gives all of them the same flat outputs. Its forward
    declares one parameter per input (torch.export matches dynamic shapes to the signature).
    """
    import inspect

    import torch

    class FlatOutputs(torch.nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: Any) -> tuple[Any, ...]:
            return tuple(v if isinstance(v, torch.Tensor) else torch.as_tensor(to_numpy(n, v))
                         for n, v in output_leaves(self.inner(*args)))

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(n if n.isidentifier() else f"input_{i}", kind) for i, n in enumerate(input_names)]
    FlatOutputs.forward.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("self", kind), *params])
    return FlatOutputs(module).eval()


def model_outputs(module: nn.Module, feeds: Feeds, input_names: Sequence[str],
                  output_names: Sequence[str] | None = None, set_name: str = "") -> dict[str, np.ndarray]:
    """``run_torch`` for the reference: an exception of the forward is the model's (``ModelError``)."""
    try:
        return run_torch(module, feeds, input_names, output_names)
    except ModelError:
        raise
    except Exception as exc:
        where = f" on input set {set_name!r}" if set_name else ""
        raise ModelError(f"the PyTorch model raised{where}: {type(exc).__name__}: {exc}") from exc


def check_deterministic(first: Mapping[str, np.ndarray], second: Mapping[str, np.ndarray], set_name: str) -> None:
    """Raise ModelError when two reference runs on the same input differ: no engine can match a moving target."""
    worst, where = 0.0, ""
    for name, a in first.items():
        b = second[name]
        if a.shape != b.shape:
            raise ModelError(f"the PyTorch reference is nondeterministic: output {name!r} has shape {a.shape} in "
                             f"one run and {b.shape} in another on input set {set_name!r}")
        if a.size and not np.allclose(a, b, rtol=DETERMINISM_RTOL, atol=DETERMINISM_ATOL, equal_nan=True):
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            diff = np.abs(a64 - b64)
            diff[np.isnan(a64) & np.isnan(b64)] = 0.0
            diff[np.isnan(diff)] = np.inf  # NaN in one run only
            if float(diff.max()) >= worst:
                worst, where = float(diff.max()), name
    if where:
        raise ModelError(f"the PyTorch reference is nondeterministic: two runs on the same input (set "
                         f"{set_name!r}) differ by max abs {worst:.4g} in output {where!r} (dropout in training "
                         "mode? torch.rand/rand_like/randn in forward?); make forward deterministic")


DETERMINISM_RTOL = 1e-5
DETERMINISM_ATOL = 1e-6
"""Two CPU runs of one module on one input are bitwise equal in practice; this only absorbs reduction order."""


def references(module: nn.Module, sets: Mapping[str, Feeds], input_names: Sequence[str],
               output_names: Sequence[str] | None) -> tuple[dict[str, dict[str, np.ndarray]],
                                                          dict[str, dict[str, np.ndarray]]]:
    """FP32 and FP64 PyTorch outputs for every named input set.

    The first set runs twice: a reference that differs from itself (dropout left on, random ops) raises
    ModelError instead of turning into a mismatch on every engine.
    """
    fp32 = {k: model_outputs(module, f, input_names, output_names, k) for k, f in sets.items()}
    if sets:
        first = next(iter(sets))
        check_deterministic(fp32[first], model_outputs(module, sets[first], input_names, output_names, first), first)
    module64 = copy.deepcopy(module).double()
    fp64 = {k: run_torch(module64, f, input_names, output_names, dtype="float64") for k, f in sets.items()}
    return fp32, fp64


def cached_references(model: ExportedModel, sets: Mapping[str, Feeds]) -> tuple[
        dict[str, dict[str, np.ndarray]], dict[str, dict[str, np.ndarray]]]:
    """``references`` stored in the model's cache directory, keyed by the input bytes.

    Every case of a model (one child process each) reuses one FP32 + FP64 reference run.
    """

    from harness.core.cache import cached, feeds_digest

    digest = feeds_digest([sets[name] for name in sorted(sets)], salt="|".join(sorted(sets)))
    path = model.artifact(f"reference-{digest}.npz")

    def build(tmp: Path) -> None:
        fp32, fp64 = references(model.module(), sets, model.input_names, model.output_names)
        flat = {f"32|{s}|{o}": v for s, outs in fp32.items() for o, v in outs.items()}
        flat |= {f"64|{s}|{o}": v for s, outs in fp64.items() for o, v in outs.items()}
        with tmp.open("wb") as f:
            np.savez(f, **flat)

    fp32_out: dict[str, dict[str, np.ndarray]] = {s: {} for s in sets}
    fp64_out: dict[str, dict[str, np.ndarray]] = {s: {} for s in sets}
    with np.load(cached(path, build)) as data:
        for key in data.files:
            kind, set_name, out = key.split("|", 2)
            (fp32_out if kind == "32" else fp64_out)[set_name][out] = data[key]
    return fp32_out, fp64_out
