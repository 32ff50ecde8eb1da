"""Checks of what a user selected, shared by the CLI and the pytest plugin: each raises HarnessError with a
message naming what exists (usage errors: exit 2 from the CLI, 4 from pytest)."""

from __future__ import annotations

import fnmatch
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.core.errors import HarnessError, UnknownNameError


def check_threads(threads: int | None) -> int | None:
    """``--threads``: None (the CPUs this process may use) or a positive count."""
    if threads is not None and threads < 1:
        raise HarnessError(f"--threads {threads}: expected a positive number of engine threads "
                           "(omit it to use the CPUs this process may use)")
    return threads


def check_timeout(seconds: float, option: str) -> float:
    """A time limit: positive and finite (0 would fail every case, nan or inf would disable the limit)."""
    if not (math.isfinite(seconds) and seconds > 0):
        raise HarnessError(f"{option} {seconds:g}: expected a positive, finite number of seconds, e.g. {option} 600")
    return seconds


def load_zoo_files(paths: Sequence[str]) -> list[str]:
    """Import each ``--zoo-file`` (trusted code); return the names they registered.

    Errors name the file: ``load_zoo_file`` reports exceptions with their line; a file that calls
    ``sys.exit`` while being imported (a script, not a zoo file) would otherwise end the whole process.
    """
    from model_zoo import load_zoo_file

    added: list[str] = []
    for path in paths:
        try:
            added += load_zoo_file(path)
        except SystemExit as exc:
            file = Path(path).expanduser().resolve()
            for name, mod in list(sys.modules.items()):  # forget the half-imported module: a retry must run it
                if getattr(mod, "__file__", None) == str(file):
                    del sys.modules[name]
            raise HarnessError(f"--zoo-file {file}: importing it called sys.exit({exc.code!r}); a zoo file must only "
                               "define and register models (put script code under "
                               "`if __name__ == \"__main__\":`)") from None
    return added


def check_selection(patterns: Sequence[str], tags: Sequence[str], option: str = "--model",
                    onnx_cases: bool = True) -> None:
    """Every model pattern and tag must select something: a typo must be an error, never a green run of nothing.

    Explicit names must exist (the error suggests close ones); a wildcard pattern must match a zoo model
    or, with ``onnx_cases``, an ONNX backend test case id (the ONNX conformance suite selects by id).
    """
    if not patterns and not tags:
        return  # nothing to check, and no reason to import the zoo (and torch) here
    from model_zoo import get_model, list_models
    from model_zoo.listing import unavailable_models

    zoo = list_models("*")
    unavailable = unavailable_models()
    for pattern in patterns:
        if not any(c in pattern for c in "*?["):
            try:
                get_model(pattern)  # unknown: the error lists what exists; unavailable: says what to install
            except UnknownNameError:
                if not (onnx_cases and pattern in _onnx_case_names()):
                    raise
    known_tags = sorted({t for n in zoo for t in get_model(n).tags})
    for tag in tags:
        if tag not in known_tags:
            raise HarnessError(f"--tag {tag!r}: no model of the zoo carries it; known tags: {', '.join(known_tags)}")
    where = "the zoo" + (" or the ONNX backend test cases" if onnx_cases else "")
    for pattern in patterns:
        if list_models([pattern]) or (onnx_cases and fnmatch.filter(_onnx_case_names(), pattern)):
            continue
        if hits := fnmatch.filter(unavailable, pattern):
            raise HarnessError(f"{option} {pattern!r} matches only models that cannot be built here: "
                               + "; ".join(f"{n}: {unavailable[n]}" for n in hits))
        raise HarnessError(f"{option} {pattern!r} matches nothing in {where}. Zoo models: {', '.join(zoo)}"
                           + ("; ONNX cases are selected by id, e.g. 'node-test_conv*'" if onnx_cases else ""))
    if tags and not list_models(patterns or ["*"], tags) and not (onnx_cases and any(
            fnmatch.filter(_onnx_case_names(), p) for p in patterns)):
        matched = ", ".join(list_models(patterns or ["*"]))
        raise HarnessError(f"{option} {' '.join(patterns or ['*'])} with --tag {' '.join(tags)} selects no model: "
                           f"none of the models matched ({matched}) carries every tag")


def _onnx_case_names() -> list[str]:
    """Ids of ONNX's backend test cases (and the zoo names of its light models); none without onnx."""
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        return []
    from harness.model.onnx_files import discover

    cases = discover()
    return [c.id for c in cases] + [f"light_{c.name.removeprefix('test_')}" for c in cases if c.case_set == "light"]
