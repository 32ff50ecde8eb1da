"""ONNX operator conformance: ONNX's backend test cases x every engine that consumes ONNX, at fp32.

Cases come from ``harness.model.onnx_files`` (node cases generated from the
onnx wheel, plus its pytorch-converted, pytorch-operator, simple and light
sets); each runs as the ONNX-native model ``onnx:<case id>`` through the same
case loop, child-process supervisor and records as every other suite. Test ids
look like ``node-test_abs-ort``. Selection:

* ``--onnx-cases ci|all`` (or ``HARNESS_ONNX_CASES``): the curated ``CI_CASES``
  or everything; default ``ci`` under ``--tag ci``, else ``all``;
* ``--onnx-case PATTERN`` (repeatable, shell wildcards over case ids);
* ``--model`` patterns, when given, also select cases by id, and the zoo name
  of a light model selects its case (``--model light_resnet50``);
* ``--backend`` as everywhere; only ONNX runtimes take part (torch reads no ONNX; ncnn is no ONNX runtime).

Cases run in a reused child process (``harness.exec``), so an engine crash or
hang costs one case, or in this process with ``--in-process``. Each test announces
the next tests' cases (``upcoming``), so the child runs them while pytest reports
this one (not under pytest-xdist or ``--in-process``).
"""

from __future__ import annotations

import fnmatch
import functools
import os

import pytest

from harness import backends

pytest.importorskip("onnx", reason="onnx_conformance: Python package 'onnx' not installed (pip install -e '.[ort]')")


from harness.core.options import CaseRequest
from harness.core.types import Precision, Status
from harness.model.onnx_files import SUITE, OnnxCase, discover, select
from harness.pytest_plugin import HARNESS_KEY, HarnessConfig, apply_outcome, execute

pytestmark = pytest.mark.onnx_conformance
def _onnx_runtime(name: str) -> bool:
    """Engines that execute ONNX graphs (``needs_onnx``). ncnn reads ONNX files too, through pnnx's model
    converter, but it is no ONNX runtime: its Mats have no batch axis and no integer or sequence values,
    so ONNX's single-operator cases would measure that, not ncnn; ncnn is judged on whole ONNX-native models
    (the ``light_*`` zoo entries) instead."""
    return backends.get(name).needs_onnx


def _mode(config: pytest.Config, hc: HarnessConfig) -> str:
    chosen = config.getoption("onnx_cases", default=None) or os.environ.get("HARNESS_ONNX_CASES")
    return chosen or "ci"  # the full set (~2000 cases per engine) is for nightly: --onnx-cases all


def _selected(config: pytest.Config, hc: HarnessConfig) -> list[OnnxCase]:
    cases = select(discover(), _mode(config, hc), config.getoption("onnx_case", default=None) or ())
    patterns = [p for p in hc.model_patterns if p != "*"]
    if patterns:
        def named(c: OnnxCase) -> list[str]:
            return [c.id, f"light_{c.name.removeprefix('test_')}"] if c.case_set == "light" else [c.id]

        cases = [c for c in cases if any(fnmatch.fnmatchcase(n, p) for n in named(c) for p in patterns)]
    return cases


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "onnx_case" not in metafunc.fixturenames:
        return
    hc = metafunc.config.stash[HARNESS_KEY]
    cases = _selected(metafunc.config, hc)
    names = [b for b in hc.backends if _onnx_runtime(b)]
    params = [pytest.param(c, b, id=f"{c.id}-{b}") for c in cases for b in names]
    metafunc.parametrize(("onnx_case", "onnx_backend"), params)


@functools.cache
def _unavailable(backend: str) -> str | None:
    """Asked once per backend, not once per case (~2,000 cases per engine)."""
    return backends.get(backend)().unavailable_reason()


def _request(onnx_case: OnnxCase, backend: str) -> CaseRequest:
    return CaseRequest(f"onnx:{onnx_case.id}", backend, Precision.FP32, suite=SUITE,
                       test_id=f"{onnx_case.id}-{backend}")


_POSITIONS = pytest.StashKey[dict[str, int]]()


def _upcoming(request: pytest.FixtureRequest) -> list[CaseRequest]:
    """The cases of the tests that follow this one in the session (this suite's, with an available engine),
    in order, stopping at the first other test."""
    session, node = request.session, request.node
    positions = session.stash.get(_POSITIONS, None)
    if positions is None or node.nodeid not in positions:
        positions = session.stash[_POSITIONS] = {item.nodeid: i for i, item in enumerate(session.items)}
    at = positions.get(node.nodeid)
    from harness.exec.supervisor import prefetch_limit

    window = prefetch_limit()  # as many as the supervisor may queue ahead
    if at is None or not window:
        return []
    ahead: list[CaseRequest] = []
    for item in session.items[at + 1:]:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if getattr(item, "function", None) is not node.function or "onnx_case" not in params:
            break
        if _unavailable(params["onnx_backend"]) is None:
            ahead.append(_request(params["onnx_case"], params["onnx_backend"]))
            if len(ahead) == window:
                break
    return ahead


def test_onnx_conformance(onnx_case: OnnxCase, onnx_backend: str, request: pytest.FixtureRequest) -> None:
    reason = _unavailable(onnx_backend)
    if reason is not None:
        pytest.skip(reason)
    # what the harness_run fixture does, without its two fixture set-ups per test (0.6 ms of ~2,000 tests)
    hc = request.config.stash[HARNESS_KEY]
    record = apply_outcome(execute(hc, _request(onnx_case, onnx_backend), upcoming=_upcoming(request)))
    assert record.status == Status.PASS.value, f"{record.status}: {record.reason}"
