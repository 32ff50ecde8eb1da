"""The backend registry: register / get / names / available.

Every module in this package is imported on first use (a backend module only
defines a class; SDKs are imported lazily), then third-party backends from the
``harness.backends`` entry-point group.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from harness.core.errors import BackendUnavailable, UnknownNameError
from harness.core.types import backend_sort_key

if TYPE_CHECKING:
    from harness.backends.base import Backend

_REGISTRY: dict[str, type[Backend]] = {}
_ALIASES: dict[str, str] = {}
_discovered = False


def register(cls: type[Backend]) -> type[Backend]:
    """Add a backend class under its ``name`` and ``aliases``."""
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"backend name {cls.name!r} is taken by {existing.__module__}.{existing.__qualname__}")
    _REGISTRY[cls.name] = cls
    for alias in cls.aliases:
        _ALIASES[alias] = cls.name
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
    for ep in entry_points(group="harness.backends"):
        ep.load()


def canonical(name: str) -> str:
    """Resolve an alias (``onnxruntime`` -> ``ort``); unknown names raise with the list of known ones."""
    _discover()
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise UnknownNameError(
            f"unknown backend {name!r}; known backends: {', '.join(names())} "
            f"(aliases: {', '.join(f'{a}={c}' for a, c in sorted(_ALIASES.items()))})"
        )
    return key


def get(name: str) -> type[Backend]:
    """The backend class for a name or alias."""
    return _REGISTRY[canonical(name)]


def names(include_hidden: bool = False) -> list[str]:
    """Canonical names of registered backends, in a stable order."""
    _discover()
    found = [n for n, c in _REGISTRY.items() if include_hidden or not c.hidden]
    return sorted(found, key=backend_sort_key)


def describe_names() -> str:
    """``torch, ort, ov, ... (aliases onnxruntime=ort, ...)`` for help texts, from the registry."""
    _discover()
    aliases = ", ".join(f"{a}={c}" for a, c in sorted(_ALIASES.items()))
    return ", ".join(names()) + (f" (aliases {aliases})" if aliases else "")


def available() -> list[str]:
    """Names of the registered, non-hidden backends that can run on this machine."""
    return [n for n in names() if get(n)().unavailable_reason() is None]


def create(name: str, *, threads: int | None = None, device: str = "cpu") -> Backend:
    """An instance of a usable backend; raises BackendUnavailable with the reason otherwise."""
    backend = get(name)(threads=threads, device=device)
    reason = backend.unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(f"{reason}. Available backends here: {', '.join(available()) or 'none'}")
    return backend
