"""The model zoo: ``from model_zoo import register_model, TensorSpec, list_models, get_model``."""

from __future__ import annotations

from harness.compare import Tolerance
from harness.types import Precision, TensorSpec
from model_zoo.registry import (
    KnownFailure,
    ModelSpec,
    get_model,
    list_models,
    load_zoo_file,
    register_model,
)

__all__ = [
    "KnownFailure",
    "ModelSpec",
    "Precision",
    "TensorSpec",
    "Tolerance",
    "get_model",
    "list_models",
    "load_zoo_file",
    "register_model",
]
