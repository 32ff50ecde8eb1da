"""Imports every built-in zoo module so its models register."""

from __future__ import annotations

from model_zoo import sequence, vision  # noqa: F401
from model_zoo import minilm  # noqa: F401 - optional: marks itself unavailable when its package is absent
from model_zoo import onnx_native  # noqa: F401 - light_* models shipped in the onnx wheel (golden outputs)
