"""The model zoo: ``from model_zoo import register_model, TensorSpec, list_models, get_model``."""

from __future__ import annotations

from harness.core.compare import Tolerance
from harness.core.spec import KnownFailure, ModelSpec
from harness.core.types import Precision, TensorSpec
from model_zoo.lookup import get_model, list_models, load_zoo_file
from model_zoo.registry import register_model

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
