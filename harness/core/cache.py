"""The content-addressed artifact cache: atomic builds, per-file locks, hash-checked reuse."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

_BUILT: list[Callable[[Path], None]] = []


@contextlib.contextmanager
def on_build(callback: Callable[[Path], None]) -> Iterator[None]:
    """Call ``callback(path)`` after each artifact that ``cached`` builds (not reuses) inside the block: a
    case child lists them beside the case's peak memory, which then includes building them (a cold cache's
    export or quantization), so that cold and warm figures are not compared blind."""
    _BUILT.append(callback)
    try:
        yield
    finally:
        _BUILT.remove(callback)


def cache_root() -> Path:
    """Artifact cache: ``HARNESS_CACHE`` or ``~/.cache/harness``."""
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness")).expanduser()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cached(path: Path, build: Callable[[Path], Any], *, extra_files: tuple[str, ...] = ()) -> Path:
    """Return ``path``, building it with ``build(tmp_path)`` unless a verified copy exists.

    The build writes to a temporary name that is renamed into place, and a
    ``.sha256`` sidecar records the content hashes of the file and its
    companions: a truncated or corrupt file in the cache is detected, deleted
    and rebuilt, never used. ``extra_files``
    are suffixes of companion files the build writes next to ``tmp_path``
    (e.g. ``.bin`` beside an ncnn ``.param``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # one builder at a time per artifact (xdist workers, case subprocesses); others wait and reuse it
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _cached_locked(path, build, extra_files)


def _cached_locked(path: Path, build: Callable[[Path], Any], extra_files: tuple[str, ...]) -> Path:
    sidecar = path.with_name(path.name + ".sha256")
    companions = [path.with_suffix(s) for s in extra_files]

    def digests() -> str:
        return "\n".join(sha256_file(p) for p in (path, *companions))

    if path.exists() and sidecar.exists() and all(c.exists() for c in companions):
        if digests() == sidecar.read_text().strip():
            return path
        warnings.warn(f"cached artifact {path} failed its hash check; rebuilding", RuntimeWarning, stacklevel=3)
    for stale in (path, sidecar, *companions):
        stale.unlink(missing_ok=True)
    tmpdir = Path(tempfile.mkdtemp(dir=path.parent, prefix=".build-"))
    try:
        tmp = tmpdir / path.name
        build(tmp)
        for s in extra_files:
            tmp.with_suffix(s).replace(path.with_suffix(s))
        tmp.replace(path)
        sidecar.write_text(digests())
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    for callback in list(_BUILT):
        callback(path)
    return path


def feeds_digest(groups: Iterable[Mapping[str, Any]], salt: str = "", length: int = 16) -> str:
    """Short content hash of named arrays (name, dtype, shape and bytes of each), e.g. calibration sets.

    ``groups`` is a sequence of feeds dicts; ``salt`` adds settings that change what is built from them.
    """
    import numpy as np

    h = hashlib.sha256(salt.encode())
    for i, feeds in enumerate(groups):
        for name in sorted(feeds):
            arr = np.ascontiguousarray(feeds[name])
            h.update(f"{i}|{name}|{arr.dtype}|{arr.shape}".encode())
            h.update(arr.tobytes())
    return h.hexdigest()[:length]
