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

from harness.core.errors import UnknownNameError
from harness.core.spec import ModelSpec
from harness.core.types import TensorSpec
from model_zoo.registry import ModelUnavailable

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
    from harness.core.cache import cache_root

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


