"""Exceptions of the harness. Each carries the status a case ends with."""

from __future__ import annotations

from harness.core.types import Status


class HarnessError(Exception):
    """Base class; ``status`` is what a case that raised it records."""

    status: Status = Status.ERROR


class UnknownNameError(HarnessError, KeyError):
    """A model, backend or precision name that does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class BackendUnavailable(HarnessError):
    """The engine is not installed or cannot run on this machine."""

    status = Status.SKIPPED


class ExportError(HarnessError):
    """torch could not export the model to the artifact format."""

    status = Status.EXPORT_FAILED


class ConversionError(HarnessError):
    """The engine rejected the artifact (unsupported op, parse error, build failure)."""

    status = Status.CONVERT_FAILED


class UnsupportedPrecision(HarnessError):
    """The backend cannot build this model at the requested precision."""

    status = Status.UNSUPPORTED
