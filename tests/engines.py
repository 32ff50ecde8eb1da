"""Skip markers for tests that need an engine: an engine-free install (tox -e unit) skips them with the reason."""

from __future__ import annotations

import importlib.util

import pytest


def _missing(*modules: str) -> bool:
    return any(importlib.util.find_spec(m) is None for m in modules)


needs_ort = pytest.mark.skipif(_missing("onnxruntime", "onnx"),
                               reason="needs ONNX Runtime and onnx (pip install -e '.[ort]')")
needs_ov = pytest.mark.skipif(_missing("openvino"), reason="needs OpenVINO (pip install -e '.[openvino]')")
