"""PyTorch references: FP32 eager outputs (the verdict's reference) and FP64 (the error floor)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

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


def run_torch(module: nn.Module, feeds: Feeds, input_names: Sequence[str], output_names: Sequence[str],
              dtype: str | None = None) -> dict[str, np.ndarray]:
    """Run a torch module on host arrays; float inputs are cast to ``dtype`` when given."""
    import torch

    args = []
    for name in input_names:
        t = torch.from_numpy(np.ascontiguousarray(feeds[name]))
        if dtype is not None and t.is_floating_point():
            t = t.to(getattr(torch, dtype))
        args.append(t)
    with torch.inference_mode(), mha_fastpath_disabled():
        outs = module(*args)
    outs = outs if isinstance(outs, tuple | list) else (outs,)
    if len(outs) != len(output_names):
        raise ValueError(f"model returned {len(outs)} outputs but declares {len(output_names)}: {list(output_names)}")
    return {n: o.detach().cpu().numpy().copy() for n, o in zip(output_names, outs, strict=True)}


def references(module: nn.Module, sets: Mapping[str, Feeds], input_names: Sequence[str],
               output_names: Sequence[str]) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, np.ndarray]]]:
    """FP32 and FP64 PyTorch outputs for every named input set."""
    fp32 = {k: run_torch(module, f, input_names, output_names) for k, f in sets.items()}
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
