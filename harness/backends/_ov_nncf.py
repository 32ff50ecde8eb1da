"""NNCF post-training quantization recipes for the OpenVINO backend, per model family."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.model.export import ExportedModel

from collections.abc import Sequence
from typing import Any

TRANSFORMER_SMOOTH_QUANT_ALPHA = 0.5
"""SmoothQuant alpha for transformer MatMuls. NNCF's default (0.95) fit MiniLM's calibration sentences
(cosine 0.994) but not held-out ones (0.976); 0.5 held 0.995 on both (measured here, nncf 3.4)."""


def shape_nodes(model: ExportedModel, ov_model: Any) -> list[str]:
    """OV ops named like the ONNX nodes that compute shapes/scales (a FakeQuantize there changes sizes)."""
    from harness.backends._onnx_prep import shape_computing_nodes

    names = set(shape_computing_nodes(model.onnx_path, consumers=True))
    return sorted(op.get_friendly_name() for op in ov_model.get_ops() if op.get_friendly_name() in names)


def nncf_recipe(transformer: bool, ignored_patterns: Sequence[str] = (), ignored_names: Sequence[str] = (),
                 ) -> tuple[dict[str, Any], str]:
    """nncf.quantize keyword arguments for the model family, and their description for the record."""
    import nncf

    kwargs: dict[str, Any] = {}
    recipe = "default preset, model_type=default"
    if transformer:
        from nncf.quantization.advanced_parameters import (
            AdvancedQuantizationParameters,
            AdvancedSmoothQuantParameters,
        )

        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
        kwargs["advanced_parameters"] = AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=TRANSFORMER_SMOOTH_QUANT_ALPHA))
        recipe = f"model_type=TRANSFORMER, SmoothQuant matmul alpha {TRANSFORMER_SMOOTH_QUANT_ALPHA}"
    if ignored_patterns or ignored_names:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=list(ignored_names), patterns=list(ignored_patterns),
                                                    validate=False)
    if ignored_patterns:
        recipe += f", ignored_scope patterns {list(ignored_patterns)} (the model's int8_hints)"
    if ignored_names:
        recipe += f", {len(ignored_names)} shape/scale-computing ops left float"
    return kwargs, recipe


def nncf_missing() -> str | None:
    import importlib.util

    if importlib.util.find_spec("nncf") is None:
        return f"ov int8: NNCF (post-training quantization for OpenVINO) is not installed: {NNCF_HINT}"
    return None


NNCF_HINT = "pip install nncf (or pip install -e '.[openvino]')"
