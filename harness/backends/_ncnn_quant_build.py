"""ncnn int8 end to end: who quantizes (ncnn's tools or the Python port), building the cached artifact, and
the audit of what the loaded int8 net computes in int8 and, for every other compute layer, why not.

ncnn2table + ncnn2int8 are used when installed (``$NCNN_TOOLS`` or PATH; ``_ncnn_tools``), else the harness's
Python port of them (``_ncnn_quant``, ``_ncnn_quant_weights``); ``HARNESS_NCNN_INT8=tools|python`` forces one.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.backends import _ncnn_tools as tools
from harness.backends._ncnn_quant import QUANT_TYPES, QuantSettings, ptq
from harness.backends._ncnn_quant_weights import WEIGHT_ONLY_TYPES
from harness.core.errors import UnsupportedPrecision
from harness.core.types import Feeds, TensorSpec

INT8_ENV = "HARNESS_NCNN_INT8"
PYTHON_HANDLES = QUANT_TYPES | WEIGHT_ONLY_TYPES


@dataclass(frozen=True)
class Int8Quantizer:
    """Who builds ncnn int8 models here: ncnn's tools (``tools`` maps tool name -> path) or the Python port."""

    label: str
    method: str = "kl"
    tools: Mapping[str, Path] = field(default_factory=dict)

    def identity(self) -> str:
        """What changes the artifact it builds: the tool binaries, or the Python quantizer's code and ncnn."""
        from harness.core.machine import module_version

        h = hashlib.sha256(f"{self.label}|{self.method}".encode())
        if self.tools:
            files = [self.tools[t] for t in sorted(self.tools)]
        else:
            here = Path(__file__).parent
            files = [here / "_ncnn_quant.py", here / "_ncnn_quant_weights.py", here / "_ncnn_param.py"]
            h.update(module_version("ncnn").encode())
        for f in files:
            h.update(f.read_bytes())
        return h.hexdigest()


def int8_quantizer() -> Int8Quantizer:
    """ncnn's tools when installed (or forced by ``HARNESS_NCNN_INT8=tools``), else the Python port;
    UnsupportedPrecision when the tools are asked for (that variable, or ``NCNN_TOOLS``) and are not usable."""
    choice = os.environ.get(INT8_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "tools", "python"):
        raise UnsupportedPrecision(f"{INT8_ENV}={choice!r}: use auto, tools or python")
    if choice == "python":
        return Int8Quantizer(QuantSettings().label)
    try:
        return Int8Quantizer(tools.TOOLS_LABEL, tools=tools.find_tools())
    except UnsupportedPrecision as exc:
        asked = f"{INT8_ENV}=tools" if choice == "tools" else "NCNN_TOOLS" if os.environ.get("NCNN_TOOLS") else None
        if asked is not None:
            raise UnsupportedPrecision(f"{exc} (or unset {asked} to quantize with the harness's Python port)") from exc
    return Int8Quantizer(QuantSettings().label)


def build(quantizer: Int8Quantizer, param: Path, out: Path, calibration: Sequence[Feeds],
          inputs: Sequence[TensorSpec], threads: int, fp32_net: Callable[[], Any]) -> None:
    """Write the int8 model of ``param`` at ``out`` (+ .bin, .table, and .json: the report recorded in the
    case's settings) with ncnn's tools or, when the quantizer has none, the Python port."""
    start = time.perf_counter()
    samples = tools.calibration_items(calibration, inputs)
    report: dict[str, Any] = {"int8_quantizer": quantizer.label, "calibration_method": quantizer.method,
                              "calibration_samples": len(samples)}
    if quantizer.tools:
        tools.quantize(dict(quantizer.tools), param, param.with_suffix(".bin"), out, calibration, inputs, threads)
        report.update(tools={k: str(v) for k, v in quantizer.tools.items()}, int8_kept_fp32={})
    else:
        net = fp32_net()
        try:
            done = ptq(param, out, net, samples, QuantSettings(method=quantizer.method))
        finally:
            net.clear()
        report.update(int8_kept_fp32=done["kept_fp32"], calibration_notes=done["calibration_notes"])
    report["quantize_seconds"] = round(time.perf_counter() - start, 3)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))


def int8_audit(layers: Sequence[tools.Layer], loaded: Iterable[tuple[str, str]], use_int8_inference: bool,
               int8_weight_blobs: int, quantizer: str, kept: Mapping[str, str]) -> tuple[Counter[str], dict[str, str]]:
    """Compute layers of the loaded net (``(name, type)`` pairs) by the precision they run at, and why each
    fp32 one is fp32: int8 needs an int8_scale_term in the .param, int8 weights in the .bin and ncnn's
    int8 inference on. ``kept`` holds the quantizer's own reasons for layers it left fp32."""
    params = {la.name: la for la in layers}
    counts: Counter[str] = Counter()
    fp32: dict[str, str] = {}
    for name, type_ in loaded:
        if type_ not in tools.COMPUTE_LAYERS:
            continue
        la = params.get(name)
        term = la.params.get(tools.INT8_SCALE_KEY.get(type_, "8"), "0") if la is not None else "0"
        if term in ("0", ""):
            handled = tools.TOOLS_QUANTIZE if quantizer == tools.TOOLS_LABEL else PYTHON_HANDLES
            fp32[name] = kept.get(name) or (f"{type_} left fp32 by {quantizer}" if type_ in handled
                                            else f"{quantizer} does not quantize {type_}")
        elif not use_int8_inference and type_ not in tools.RUNTIME_QUANTIZED:
            fp32[name] = "int8 scales in the .param, but ncnn's use_int8_inference is off"
        elif int8_weight_blobs == 0:
            fp32[name] = "int8 scales in the .param, but the .bin holds no int8 weights"
        else:
            counts["int8"] += 1
            continue
        counts["fp32"] += 1
    return counts, fp32
