"""Value types shared by every part of the harness."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

import numpy as np

Feeds: TypeAlias = Mapping[str, np.ndarray]
"""Named host arrays: model inputs or outputs."""


class Precision(StrEnum):
    """Numeric precision a case is requested at."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    @classmethod
    def parse(cls, value: str) -> Precision:
        """Parse a user-supplied name; the error lists what exists."""
        try:
            return cls(value.lower())
        except ValueError:
            known = ", ".join(p.value for p in cls)
            raise ValueError(f"unknown precision {value!r}; known precisions: {known}") from None


class Status(StrEnum):
    """The one outcome every case ends with."""

    PASS = "pass"
    FALLBACK = "fallback"  # outputs match, but the engine did not compute at the requested precision
    MISMATCH = "mismatch"
    NONFINITE = "nonfinite"
    EXPORT_FAILED = "export_failed"
    CONVERT_FAILED = "convert_failed"
    UNSUPPORTED = "unsupported"
    CRASH = "crash"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"
    XFAIL = "xfail"
    XPASS = "xpass"
    ERROR = "error"  # a fault of the harness itself, never of the engine


@dataclass(frozen=True)
class TensorSpec:
    """One model input.

    A dimension is an int or the name of a symbolic (dynamic) axis; the sizes a
    symbolic axis is tested at are declared on the model (``dynamic_sizes``).
    ``low``/``high`` bound generated values (integer inputs: token ids, classes).
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    low: float | None = None
    high: float | None = None

    @property
    def is_integer(self) -> bool:
        """True for integer and boolean inputs."""
        return np.dtype(self.dtype).kind in "iub"

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """Axis index -> symbolic name for the dynamic dimensions."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def concrete_shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """The shape with every symbolic dimension replaced by ``sizes[name]``."""
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)
