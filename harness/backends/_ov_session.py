"""The OpenVINO session: feeding host arrays to compiled ports, the bound native call, output ports."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.backends.base import BoundCall, Session
from harness.core.errors import ConversionError, HarnessError
from harness.core.spec import ModelSpec
from harness.core.types import Cause, Feeds, Status


class OpenVinoSession(Session):
    """One compiled model and its synchronous infer request; host numpy in and out."""

    def __init__(self, compiled: Any, artifact: Path, settings: dict[str, Any], executed: str,
                 output_names: Sequence[str], input_names: Sequence[str] = ()) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.artifact = artifact
        self.settings = settings
        self.executed_precision = executed
        self.ports = _output_ports(compiled, output_names)
        self.inputs = input_ports(list(compiled.inputs), input_names or sorted(
            {n for port in compiled.inputs for n in port.get_names()}))

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        self.request.infer(_host_feeds(feeds, self.inputs))
        return {name: _host_array(self.request.get_tensor(port)) for name, port in self.ports.items()}

    def bind(self, feeds: Feeds) -> BoundCall:
        """Input tensors set on the infer request once (copied once); the call is the
        binding's synchronous ``infer`` with no inputs to dispatch and outputs left in the request
        (``openvino._pyopenvino.InferRequest.infer(request, {}, share_outputs=True)``: what ``benchmark_app``'s
        ``request.infer()`` runs, minus the Python wrapper's output copies). ``engine_ms`` is the
        runtime's own ``request.latency`` of the call, the figure ``benchmark_app`` reports."""
        import openvino as ov

        request = self.request
        for port in self.compiled.inputs:
            name = next((n for n in port.get_names() if n in feeds), None)
            if name is None:
                raise KeyError(f"ov: no feed for input {sorted(port.get_names())} (feeds: {sorted(feeds)})")
            # a tensor owning a copy in the port's type: a later run() copies its feeds into it, so it must
            # not share memory with the caller's array (or with one freed after this call is dropped)
            array = np.ascontiguousarray(feeds[name], dtype=port.get_element_type().to_dtype())
            request.set_tensor(port, ov.Tensor(array, shared_memory=False))
        native = getattr(getattr(ov, "_pyopenvino", None), "InferRequest", None)
        if native is not None and isinstance(request, native):
            infer = native.infer
            call = lambda: infer(request, {}, True, False)  # noqa: E731 - the timed call, nothing else
        else:  # another binding layout: the public call (copies outputs)
            call = request.infer
        return BoundCall(call, engine_ms=lambda: request.latency)

    def close(self) -> None:
        self.request = None
        self.compiled = None


def input_ports(ports: Sequence[Any], names: Sequence[str]) -> dict[str, int]:
    """Model input name -> index of the OpenVINO input port fed with it; names without a port are left out.

    OpenVINO's ONNX frontend removes graph inputs no output depends on (``CastLike``'s ``like``, an
    empty ``axes``), and where an input flows straight to an output (inference ``Dropout``) the port
    keeps only the output's tensor name. So: by tensor name first; the rest by position when as many
    ports as names are left, none when no port is left (pruned). Anything else is ambiguous.
    """
    index = {n: i for i, port in enumerate(ports) for n in port.get_names()}
    found = {n: index[n] for n in names if n in index}
    rest_names = [n for n in names if n not in found]
    rest_ports = [i for i in range(len(ports)) if i not in found.values()]
    if rest_names and rest_ports:
        if len(rest_names) != len(rest_ports):
            have = [sorted(p.get_names()) for p in ports]
            raise ConversionError(f"ov: cannot tell which input ports {have} take the inputs {rest_names}",
                                  cause=Cause.HARNESS)
        found.update(zip(rest_names, rest_ports, strict=True))
    return found


def _host_feeds(feeds: Feeds, inputs: dict[str, int]) -> dict[int, np.ndarray]:
    """The feeds by port index (see ``input_ports``), C-contiguous with their rank kept.

    ``np.ascontiguousarray`` would turn a 0-d array into shape ``[1]`` (it returns ndim >= 1), which
    a static scalar port rejects. OpenVINO wraps host arrays without copying and refuses read-only
    ones (``ValueError: array is not writeable``; arrays decoded from ONNX's ``.pb`` files are), so
    those are copied.
    """
    out = {}
    for name, value in feeds.items():
        if name in inputs:
            a = np.asarray(value, order="C")
            out[inputs[name]] = _ov_tensor(a) if a.dtype.name in OV_EXTENDED else a if a.flags.writeable else a.copy()
    return out


OV_EXTENDED = {"bfloat16": "bf16", "float8_e4m3fn": "f8e4m3", "float8_e5m2": "f8e5m2"}
"""ml_dtypes element types OpenVINO tensors hold: fed and read as raw bits (OpenVINO's numpy view of a
bf16 tensor is a 16-bit float *view of the bits*, not the values)."""


def _ov_tensor(a: np.ndarray) -> Any:
    """An OpenVINO tensor of ``a``'s ml_dtypes element type holding ``a``'s bits."""
    import openvino as ov

    tensor = ov.Tensor(getattr(ov.Type, OV_EXTENDED[a.dtype.name]), ov.Shape(list(a.shape)))
    tensor.data[...] = np.ascontiguousarray(a).view(tensor.data.dtype).reshape(tensor.data.shape)
    return tensor


def _host_array(tensor: Any) -> np.ndarray:
    """A copy of an output tensor as a numpy array; bf16/f8 tensors as ml_dtypes arrays of their values."""
    data = np.array(tensor.data, copy=True)
    kind = {v: k for k, v in OV_EXTENDED.items()}.get(str(tensor.element_type.get_type_name()))
    if kind is not None:
        import ml_dtypes

        data = data.view(getattr(ml_dtypes, kind))
    return data


class NotFeedable(HarnessError):
    """The engine built the model, but its Python API cannot take the case's values (a sequence, an empty optional).

    ``unsupported`` charged to the harness: what the engine computes is never seen.
    """

    status = Status.UNSUPPORTED
    cause = Cause.HARNESS


def non_tensor_values(spec: ModelSpec) -> str | None:
    """Which of an ONNX case's inputs/expected outputs are not arrays (lists, None), or None when all are."""
    found = [f"{n!r} is {kind}" for n, kind in _non_tensor(spec).items()]
    return ", ".join(found) or None


def _non_tensor(spec: ModelSpec) -> dict[str, str]:
    if spec.golden is None:  # PyTorch-referenced models: generated arrays only
        return {}
    values = [item for pair in spec.golden()[:1] for named in pair for item in named.items()]
    return {n: ("a sequence" if isinstance(v, list | tuple) else "an empty optional" if v is None
                else f"a {v.dtype.name} tensor (an ml_dtypes array)")
            for n, v in values if not isinstance(v, np.ndarray) or (v.dtype.isbuiltin != 1
                                                                    and v.dtype.name not in OV_EXTENDED)}


def _output_ports(compiled: Any, names: Sequence[str]) -> dict[str, Any]:
    """Model output name -> compiled output port: by tensor name, else by position."""
    outputs = list(compiled.outputs)
    if len(outputs) != len(names):
        have = [sorted(o.get_names()) for o in outputs]
        raise ConversionError(f"ov: the compiled model has {len(outputs)} outputs {have}, the model declares "
                              f"{len(names)} ({', '.join(names)}); check the conversion source")
    by_name = {n: o for o in outputs for n in o.get_names()}
    return {n: by_name.get(n, outputs[i]) for i, n in enumerate(names)}
