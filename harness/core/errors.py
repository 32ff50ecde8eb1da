"""Exceptions of the harness. Each carries the status a case ends with and the cause it names."""

from __future__ import annotations

from harness.core.types import Cause, Status


class HarnessError(Exception):
    """Base class: ``status`` is what a case that raised it records, ``cause`` whom the failure is charged to.

    Both are class defaults; ``cause=`` overrides the cause of one instance (an ``UnsupportedPrecision``
    whose reason is a missing tool is the environment's, not the engine's).
    """

    status: Status = Status.ERROR
    cause: Cause = Cause.HARNESS
    detail: str = ""
    """The engine's full output (tracebacks, long lists) behind the one readable line of ``str(exc)``."""

    def __init__(self, *args: object, cause: Cause | None = None, detail: str = "") -> None:
        super().__init__(*args)
        if cause is not None:
            self.cause = cause
        self.detail = detail


REASON_LIMIT = 600
"""Characters of a reason shown in records and reports; the rest goes to the record's ``detail``."""


def first_line(text: object, limit: int = REASON_LIMIT) -> str:
    """The first non-empty line of ``text`` (an exception or a message), cut to ``limit`` characters with an
    ellipsis: the readable part of an engine's error."""
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "\u2026"


class UnknownNameError(HarnessError, KeyError):
    """A model, backend or precision name that does not exist."""

    cause = Cause.ENVIRONMENT

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class BackendUnavailable(HarnessError):
    """The engine is not installed or cannot run on this machine."""

    status = Status.SKIPPED
    cause = Cause.ENVIRONMENT


class ExportError(HarnessError):
    """torch could not export the model to the artifact format (the model is not exportable as written)."""

    status = Status.EXPORT_FAILED
    cause = Cause.MODEL


class ConversionError(HarnessError):
    """The engine rejected the artifact (unsupported op, parse error, build failure)."""

    status = Status.CONVERT_FAILED
    cause = Cause.ENGINE


class UnsupportedPrecision(HarnessError):
    """The backend cannot build this model at the requested precision."""

    status = Status.UNSUPPORTED
    cause = Cause.ENGINE


class ModelError(HarnessError):
    """The model itself is at fault (nondeterministic, returns no tensor, bad spec): not the engine's failure."""

    status = Status.ERROR
    cause = Cause.MODEL


class ModelSpecError(ModelError):
    """A model's declaration is invalid (unknown dtype, negative dimension, no sizes for an axis, a factory
    that returns no module): raised at registration or build, naming the model's file and line."""
