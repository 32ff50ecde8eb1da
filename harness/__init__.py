"""Cross-backend conformance and benchmarking harness for deep-learning inference.

``import harness`` needs only numpy: engines and torch are imported where used.
"""

from __future__ import annotations

from harness.core.compare import CompareResult, Tolerance, compare
from harness.core.errors import (
    BackendUnavailable,
    ConversionError,
    ExportError,
    HarnessError,
    UnknownNameError,
    UnsupportedPrecision,
)
from harness.core.types import Feeds, Precision, Status, TensorSpec

__all__ = [
    "BackendUnavailable",
    "CompareResult",
    "ConversionError",
    "ExportError",
    "Feeds",
    "HarnessError",
    "Precision",
    "Status",
    "TensorSpec",
    "Tolerance",
    "UnknownNameError",
    "UnsupportedPrecision",
    "compare",
]
__version__ = "0.1.0"
