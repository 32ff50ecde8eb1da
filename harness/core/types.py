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
    """The one outcome every case ends with. Its properties come from ``STATUS_TABLE``, the only copy."""

    PASS = "pass"
    FALLBACK = "fallback"
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
    ERROR = "error"

    @property
    def info(self) -> StatusInfo:
        """This status's row of ``STATUS_TABLE``."""
        return STATUS_TABLE[self]

    @property
    def passing(self) -> bool:
        """The outputs matched the reference (pass, fallback, xpass)."""
        return self.info.kind == "passing"

    @property
    def failing(self) -> bool:
        """A failure: the engine, the model or the harness got it wrong, or the case could not finish."""
        return self.info.kind == "failing"

    @classmethod
    def ordered(cls) -> list[Status]:
        """Every status in display order (best first)."""
        return sorted(cls, key=lambda s: STATUS_TABLE[s].order)


class Cause(StrEnum):
    """Whom a non-pass case is charged to. Every record that is not a pass names one."""

    ENGINE = "engine"  # the engine's own error, crash or wrong numbers
    MODEL = "model"  # the model as written (untraceable, nondeterministic, frozen by tracing)
    HARNESS = "harness"  # our conversion, recipe, API limit or bug: a bug of ours to fix
    ENVIRONMENT = "environment"  # a missing package/tool, no GPU, a locale: what this machine lacks


@dataclass(frozen=True)
class StatusInfo:
    """How one status is counted and shown everywhere (terminal, report, compare, trend)."""

    order: int
    kind: str
    """``passing`` (outputs matched), ``failing``, or ``neutral`` (known failure, not run)."""
    abbrev: str
    colour: str
    dark_text: bool
    meaning: str


STATUS_TABLE: dict[Status, StatusInfo] = {
    Status.PASS: StatusInfo(0, "passing", "pass", "#2e9e4f", False, "outputs match at the requested precision"),
    Status.FALLBACK: StatusInfo(1, "passing", "FALLBK", "#f0a830", True,
                                "outputs match, but there is no evidence the requested precision executed"),
    Status.XPASS: StatusInfo(2, "passing", "XPASS", "#5ec8d8", True,
                             "a known-failure entry's case passed: remove or update the entry"),
    Status.XFAIL: StatusInfo(3, "neutral", "xfail", "#5b7fd6", False, "a declared known failure, still failing"),
    Status.MISMATCH: StatusInfo(4, "failing", "MISM", "#d64541", False, "outputs differ beyond the tolerance"),
    Status.NONFINITE: StatusInfo(5, "failing", "NaN", "#8e1b1b", False, "NaN/Inf where the reference has none"),
    Status.EXPORT_FAILED: StatusInfo(6, "failing", "EXPF", "#8e5cc2", False, "torch could not export the model"),
    Status.CONVERT_FAILED: StatusInfo(7, "failing", "CONVF", "#c39be8", True,
                                      "the engine could not build the model"),
    Status.CRASH: StatusInfo(8, "failing", "CRASH", "#2b2b2b", False, "the case's process died (signal)"),
    Status.TIMEOUT: StatusInfo(9, "failing", "TIME", "#a0522d", False, "the case exceeded its time limit"),
    Status.ERROR: StatusInfo(10, "failing", "ERR", "#e05fb5", False, "an exception while running the model"),
    Status.UNSUPPORTED: StatusInfo(11, "neutral", "unsup", "#b5b5b5", True,
                                   "the engine does not implement the precision or an op (with reason)"),
    Status.SKIPPED: StatusInfo(12, "neutral", "skip", "#e6e6e6", True, "not run (with reason)"),
}
"""The one status table: adding a status is one enum member plus one row here."""


def status_info(name: str) -> StatusInfo | None:
    """The table row of a status name read from a record (None for a name this version does not know)."""
    try:
        return STATUS_TABLE[Status(name)]
    except ValueError:
        return None


PASSING = frozenset(s.value for s in Status if s.passing)
"""Status names whose outputs matched the reference."""
FAILING = frozenset(s.value for s in Status if s.failing)
"""Status names that are failures."""
STATUS_ORDER = [s.value for s in Status.ordered()]
"""Status names in display order."""
STATUS_COLORS = {s.value: STATUS_TABLE[s].colour for s in Status.ordered()}
"""Status name -> colour in the report."""


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


REFERENCE_BACKEND = "torch"
"""The backend whose FP32 outputs are the reference; listed first wherever backends are listed."""


def backend_sort_key(name: str) -> tuple[int, str]:
    """Sort key for backend names: the reference first, then alphabetical (no list of names to maintain)."""
    return (0 if name == REFERENCE_BACKEND else 1, name)


def precision_sort_key(name: str) -> tuple[int, str]:
    """Sort key for precision names: fp32, fp16, int8 (``Precision`` order), then any other name."""
    order = [p.value for p in Precision]
    return (order.index(name) if name in order else len(order), name)
