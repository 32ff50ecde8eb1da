"""Catalog models (``torchvision:NAME``, ``timm:NAME``) and the zoo listing (``harness models``).

``resolve("torchvision:resnet50")`` builds a ``ModelSpec`` on the fly: the
classification model from the installed package, with local weights when a file
exists (``$HARNESS_WEIGHTS`` or ``<cache>/weights``: ``<provider>/<name>.pth`` or
``.safetensors``; for torchvision also its torch.hub checkpoint), else seeded
random weights. Both packages are optional and are not installed here: on this
platform they require a CUDA build of torch and would replace the CPU one, so
asking for a catalog model without the package raises ``ModelUnavailable``
(a skip with the reason), never an import error.

``describe(names)`` and ``format_table(rows)`` list models with tags, inputs,
parameter counts and FLOPs (``torch.utils.flop_counter.FlopCounterMode`` on the
export example: a multiply-add counts as 2 FLOPs; it counts matmul, convolution and
attention ops only, so recurrent layers such as ``nn.LSTM`` are not included).
ONNX-native models have no torch module: no counts.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from harness.errors import UnknownNameError
from harness.types import TensorSpec
from model_zoo.registry import ModelSpec, ModelUnavailable

PROVIDERS = ("torchvision", "timm")
WEIGHTS_ENV = "HARNESS_WEIGHTS"
WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")


def parse(name: str) -> tuple[str, str]:
    """``'timm:resnet50'`` -> ``('timm', 'resnet50')``; unknown providers raise with the known ones."""
    provider, _, model = name.partition(":")
    if provider not in PROVIDERS or not model:
        raise UnknownNameError(f"unknown catalog model {name!r}: expected PROVIDER:NAME with PROVIDER one of "
                               f"{', '.join(PROVIDERS)}, e.g. torchvision:resnet50 or timm:resnet50")
    return provider, model


def unavailable_reason(provider: str) -> str | None:
    """None when ``provider`` imports here; else why not and what to do."""
    advice = (f"catalog models are optional: install {provider} where it matches the installed torch (on this "
              "CPU-only setup pip would replace torch with a CUDA build), or use the built-in zoo")
    if importlib.util.find_spec(provider) is None:
        return f"{provider} is not installed; {advice}"
    try:
        importlib.import_module(provider)
    except Exception as exc:  # e.g. torchvision built for another torch: its C ops fail to load
        return f"{provider} is installed but does not import beside torch here ({type(exc).__name__}: {exc}); {advice}"
    return None


def weights_dir() -> Path:
    """Where local catalog weights are looked up: ``$HARNESS_WEIGHTS`` or ``<cache>/weights``."""
    from harness.export import cache_root

    return Path(os.environ.get(WEIGHTS_ENV, cache_root() / "weights")).expanduser()


def local_weights(provider: str, model: str, extra: Iterable[Path] = ()) -> Path | None:
    """The first existing local weights file for a catalog model, if any."""
    candidates = [weights_dir() / provider / f"{model}{s}" for s in WEIGHT_SUFFIXES]
    return next((p for p in (*candidates, *extra) if p.is_file()), None)


def _load_state(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    return torch.load(path, weights_only=True, map_location="cpu")


def _torchvision(model: str) -> tuple[Callable[[], Any], tuple[int, int, int], Path | None]:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)  # classification models only
    if model not in known:
        close = difflib.get_close_matches(model, known, n=5)
        raise UnknownNameError(f"torchvision:{model}: not a torchvision classification model"
                               + (f"; did you mean {', '.join(close)}?" if close else "")
                               + f" ({len(known)} known: torchvision.models.list_models(module=torchvision.models))")
    size, hub_files = 224, []
    try:
        default = torchvision.models.get_model_weights(model).DEFAULT
        size = int(default.transforms().crop_size[0])
        import torch

        hub_files = [Path(torch.hub.get_dir()) / "checkpoints" / Path(default.url).name]
    except Exception:  # no published weights: random weights at 224
        pass
    weights = local_weights("torchvision", model, hub_files)

    def factory() -> Any:
        net = torchvision.models.get_model(model, weights=None)
        if weights is not None:
            net.load_state_dict(_load_state(weights))
        return net

    return factory, (3, size, size), weights


def _timm(model: str) -> tuple[Callable[[], Any], tuple[int, int, int], Path | None]:
    import timm

    if not timm.is_model(model):
        close = difflib.get_close_matches(model, timm.list_models(), n=5)
        raise UnknownNameError(f"timm:{model}: not a timm model" + (f"; did you mean {', '.join(close)}?" if close
                                                                       else "") + " (timm.list_models())")
    input_size: tuple[int, int, int] = (3, 224, 224)
    try:
        input_size = tuple(timm.models.get_pretrained_cfg(model).input_size)
    except Exception:  # no pretrained config: the common default
        pass
    weights = local_weights("timm", model)

    def factory() -> Any:
        net = timm.create_model(model, pretrained=False)
        if weights is not None:
            net.load_state_dict(_load_state(weights))
        return net

    return factory, input_size, weights


def resolve(name: str) -> ModelSpec:
    """A ModelSpec for ``torchvision:NAME`` or ``timm:NAME`` (ModelUnavailable when the package is absent)."""
    provider, model = parse(name)
    reason = unavailable_reason(provider)
    if reason is not None:
        raise ModelUnavailable(f"{name}: {reason}")
    factory, input_size, weights = (_torchvision if provider == "torchvision" else _timm)(model)
    origin = f"weights {weights}" if weights is not None else "seeded random weights (no local weights file)"
    return ModelSpec(
        name=name, factory=factory, inputs=(TensorSpec("input", ("batch", *input_size)),),
        tags=frozenset({provider, "catalog", "vision", "classification"}), dynamic_sizes={"batch": (1, 2)},
        source=f"{provider}:{model}", description=f"{provider} {model}, {origin}",
    )


# -- listing -----------------------------------------------------------------------------------------------------


def _inputs_text(spec: ModelSpec) -> str:
    parts = []
    for t in spec.inputs:
        dims = ",".join(str(d) if isinstance(d, int) else f"{d}={'|'.join(map(str, spec.dynamic_sizes[d]))}"
                        for d in t.shape)
        parts.append(f"{t.name}[{dims}] {t.dtype}")
    return "; ".join(parts)


def count_flops(spec: ModelSpec, module: Any) -> int | None:
    """FLOPs of one forward pass on the export example (None when the counter cannot run the model)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from harness.inputs import export_example
    from harness.reference import mha_fastpath_disabled

    feeds = export_example(spec)
    args = [torch.from_numpy(feeds[t.name]) for t in spec.inputs]
    try:
        with torch.no_grad(), mha_fastpath_disabled(), FlopCounterMode(display=False) as counter:
            module(*args)
    except Exception:  # an uncountable model lists "-" rather than failing the listing
        return None
    return int(counter.get_total_flops())


def describe(names: Iterable[str]) -> list[dict[str, Any]]:
    """One row per model: name, tags, inputs, parameters, FLOPs, exporter, opset, description, source.

    A model that cannot be built here (optional package missing) gets its row
    with ``unavailable`` set to the reason and no counts.
    """
    from model_zoo.registry import get_model

    rows = []
    for name in names:
        try:
            spec = get_model(name)
        except ModelUnavailable as exc:
            rows.append({"name": name, "tags": [], "inputs": "", "params": None, "flops": None, "exporter": "",
                         "opset": None, "description": "", "source": "", "unavailable": str(exc)})
            continue
        module = spec.build() if spec.onnx_file is None else None  # ONNX-native models have no torch module
        rows.append({
            "name": name, "tags": sorted(spec.tags), "inputs": _inputs_text(spec),
            "params": None if module is None else sum(p.numel() for p in module.parameters()),
            "flops": None if module is None else count_flops(spec, module),
            "exporter": spec.exporter, "opset": spec.opset, "description": spec.description, "source": spec.source,
            "unavailable": None,
        })
    return rows


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def format_table(rows: Iterable[dict[str, Any]]) -> str:
    """Aligned plain-text table of ``describe`` rows (unavailable models show the reason)."""
    header = ("model", "params", "FLOPs", "inputs", "tags")
    lines = []
    for r in rows:
        if r.get("unavailable"):  # the reason goes last, so it does not widen the other columns
            lines.append((r["name"], "-", "-", "-", f"unavailable: {r['unavailable']}"))
        else:
            lines.append((r["name"], _human(r["params"]), _human(r["flops"]), r["inputs"], ",".join(r["tags"])))
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    return "\n".join(out)
