"""Finding models: the built-in zoo, catalog names (torchvision:, timm:, onnx:) and users' zoo files."""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import importlib
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path

from harness.core.errors import HarnessError, UnknownNameError
from harness.core.spec import ModelSpec
from model_zoo.registry import _MODELS, _UNAVAILABLE, ONNX_CASE_PREFIX, ModelUnavailable, add_model


def _load_builtin() -> None:
    import model_zoo.builtin  # noqa: F401 - registers the built-in zoo


def get_model(name: str) -> ModelSpec:
    """The spec of one model; unknown names raise with the closest known ones."""
    if not name.startswith(ONNX_CASE_PREFIX):  # an ONNX test case needs neither the zoo nor torch
        _load_builtin()
    if name in _UNAVAILABLE and name not in _MODELS:
        raise ModelUnavailable(_UNAVAILABLE[name])
    if name.startswith(ONNX_CASE_PREFIX) and name not in _MODELS:  # ONNX's own test cases: onnx:node-test_abs
        from model_zoo.onnx_native import resolve_case

        add_model(resolve_case(name))
    elif ":" in name and name not in _MODELS:  # catalog specs: torchvision:NAME, timm:NAME
        from model_zoo.catalog import resolve

        add_model(resolve(name))
    try:
        return _MODELS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, _MODELS, n=5, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownNameError(
            f"unknown model {name!r}{hint} Known models: {', '.join(sorted(_MODELS))}. "
            "Add one with @register_model or --zoo-file."
        ) from None


def list_models(patterns: str | Iterable[str] = "*", tags: Iterable[str] = ()) -> list[str]:
    """Sorted names matching any shell-style pattern and carrying every tag in ``tags``."""
    _load_builtin()
    pats = [patterns] if isinstance(patterns, str) else list(patterns) or ["*"]
    want = set(tags)
    return sorted(
        n for n, s in _MODELS.items() if any(fnmatch.fnmatchcase(n, p) for p in pats) and want <= s.tags
    )


def load_zoo_file(path: str | Path) -> list[str]:
    """Import a user's Python file so its ``@register_model`` functions join the zoo.

    The file is executed: it is trusted input, like a conftest.py. Like pytest with a conftest.py, its
    directory is put first on ``sys.path`` so helper modules beside it import (``from my_layers import
    Net``). Returns the names it registered. Errors name the file and line and keep their class (a bad
    declaration stays a ``ModelSpecError``).
    """
    _load_builtin()
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise HarnessError(f"--zoo-file {path}: no such file (looked at {file})")
    before = dict(_MODELS)
    mod_name = f"_harness_zoo_{hashlib.sha1(str(file).encode()).hexdigest()[:10]}"
    if mod_name in sys.modules:
        return sorted(n for n, s in _MODELS.items() if s.source.startswith(str(file)))
    if str(file.parent) not in sys.path:
        sys.path.insert(0, str(file.parent))
    spec = importlib.util.spec_from_file_location(mod_name, file)
    if spec is None or spec.loader is None:
        raise HarnessError(f"--zoo-file {file}: Python cannot import it (not a .py source file?)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except HarnessError as exc:
        del sys.modules[mod_name]
        err = copy.copy(exc)  # same class and cause, message prefixed with the file
        err.args = (f"--zoo-file {file}: {exc}",)
        raise err from exc
    except Exception as exc:
        del sys.modules[mod_name]
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(file)]
        line = f":{frames[-1].lineno}" if frames else ""
        raise HarnessError(f"--zoo-file {file}{line}: importing it raised {type(exc).__name__}: {exc}") from exc
    added = sorted(n for n, s in _MODELS.items() if before.get(n) is not s)  # new, or re-registered
    if not added:
        raise HarnessError(f"--zoo-file {file}: it registered no model (decorate factories with @register_model)")
    return added
