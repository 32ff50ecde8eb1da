"""Session.bind: the timed native call computes what run(feeds) computes, on real engines and models.

Each engine's bound call runs with its inputs bound once; its outputs (left in the engine's own buffers)
must equal ``run(feeds)``'s, and binding other feeds must change them (a call that ignored its binding, or
timed nothing, fails here). TensorRT cannot run without an NVIDIA GPU: its bound call's order of CUDA
calls is checked against recording stand-ins of the documented API.
"""

from __future__ import annotations

import numpy as np
import pytest

from harness import backends
from harness.backends.base import BoundCall, Session
from harness.core.types import Precision
from harness.model.export import ExportedModel
from harness.model.inputs import make_feeds
from model_zoo import get_model

MODEL = "resnet_tiny"


def _ready(name: str) -> None:
    reason = backends.get(name)().unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return ExportedModel(get_model(MODEL), root=tmp_path_factory.mktemp("bind-cache"))


def _feeds(seed: int) -> dict[str, np.ndarray]:
    return make_feeds(get_model(MODEL), np.random.default_rng(seed))


def _bound_outputs(name: str, bound: BoundCall) -> list[np.ndarray]:
    """What the engine holds after the bound call, read outside the timed region."""
    result = bound.call()
    if name == "ort":
        binding = next(k for k in bound.keep if hasattr(k, "copy_outputs_to_cpu"))
        return [np.asarray(o) for o in binding.copy_outputs_to_cpu()]
    if name == "ov":
        return [np.array(v) for v in result.values()]
    if name == "ncnn":
        return [np.array(m)[None] for m in result]  # pnnx drops the batch axis
    return [result.detach().numpy()]


@pytest.mark.parametrize(("name", "precision"), [("ort", Precision.FP32), ("ort", Precision.INT8),
                                                 ("ov", Precision.FP32), ("ncnn", Precision.FP32),
                                                 ("torch", Precision.FP32)])
def test_bound_call_computes_what_run_computes(model, tmp_path, name, precision):
    _ready(name)
    calibration = None
    if precision is Precision.INT8:
        from harness.model.inputs import calibration_set

        calibration = calibration_set(model.spec)
    session = backends.create(name).load(model, precision, tmp_path, calibration)
    with session:
        assert type(session).bind is not Session.bind, f"{name} times run(feeds): no native binding"
        a, b = _feeds(1), _feeds(2)
        bound_a = session.bind(a)
        assert isinstance(bound_a, BoundCall)
        got_a = _bound_outputs(name, bound_a)
        want_a = list(session.run(a).values())
        for got, want in zip(got_a, want_a, strict=True):
            np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-6)
        got_b = _bound_outputs(name, session.bind(b))
        assert not np.allclose(got_b[0].reshape(want_a[0].shape), want_a[0]), "the call ignored its new binding"
        if name == "ov":
            assert bound_a.engine_ms is not None
            assert bound_a.engine_ms() > 0  # the runtime's own latency of the last call


def test_ov_bind_does_not_alias_the_callers_arrays(model, tmp_path):
    """run() copies its feeds into the request's input tensors: they must not be the caller's bound arrays."""
    _ready("ov")
    session = backends.create("ov").load(model, Precision.FP32, tmp_path)
    a = _feeds(1)
    before = {k: v.copy() for k, v in a.items()}
    session.bind(a).call()
    session.run(_feeds(2))
    for k in a:
        np.testing.assert_array_equal(a[k], before[k])


def test_default_bind_runs_run():
    class Echo(Session):
        settings: dict = {}

        def __init__(self) -> None:
            self.calls = []

        def run(self, feeds):
            self.calls.append(feeds)
            return dict(feeds)

    echo, feeds = Echo(), {"x": np.ones(2)}
    echo.bind(feeds)()
    assert echo.calls == [feeds]


class _Recorder:
    """Stand-ins for torch.cuda's Event and Stream and TensorRT's execution context that log their calls."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def event(self, name: str):
        log = self.log

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                assert enable_timing, "timing events need enable_timing=True"

            def record(self, stream) -> None:
                log.append(f"{name}.record({stream.name})")

            def synchronize(self) -> None:
                log.append(f"{name}.synchronize")

            def elapsed_time(self, end) -> float:
                log.append(f"{name}.elapsed_time")
                return 1.25

        return Event


def test_trt_bound_call_is_execute_async_v3_between_cuda_events(monkeypatch):
    """Without a GPU: the bound call records the start event, enqueues ``execute_async_v3`` on the session's
    stream, records the end event and waits for it; ``engine_ms`` is the events' elapsed time."""
    import contextlib
    import types

    from harness.backends.tensorrt import TrtSession

    rec = _Recorder()
    events = iter([rec.event("start"), rec.event("end")])

    class Stream:
        name, cuda_stream = "s", 1234

        def synchronize(self) -> None:
            rec.log.append("stream.synchronize")

    class Context:
        def execute_async_v3(self, handle: int) -> bool:
            rec.log.append(f"execute_async_v3({handle})")
            return True

    cuda = types.SimpleNamespace(device=lambda i: contextlib.nullcontext(), stream=lambda s: contextlib.nullcontext(),
                                 Event=lambda enable_timing=False: next(events)(enable_timing))
    session = object.__new__(TrtSession)
    session._torch = types.SimpleNamespace(cuda=cuda)
    session.device_index, session.context, session.stream = 0, Context(), Stream()
    monkeypatch.setattr(TrtSession, "_bind", lambda self, feeds: rec.log.append("bind inputs") or {"y": "buffer"})
    bound = session.bind({"x": np.ones(1)})
    assert rec.log == ["bind inputs", "stream.synchronize"]  # input copies done before the first timed call
    rec.log.clear()
    bound.call()
    assert rec.log == ["start.record(s)", "execute_async_v3(1234)", "end.record(s)", "end.synchronize"]
    assert bound.engine_ms() == 1.25

    Context.execute_async_v3 = lambda self, handle: False
    with pytest.raises(RuntimeError, match="execute_async_v3 returned False"):
        bound.call()
