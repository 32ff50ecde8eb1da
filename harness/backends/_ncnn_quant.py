"""Post-training int8 quantization of ncnn models in Python: what ncnn2table + ncnn2int8 do, with numpy and ncnn.

The harness uses it where ncnn's own tools are absent (they ship in no pip package). It follows ncnn's
tools/quantize:

- weight scales: 127/absmax per output channel (per group for depthwise); a 3x3 stride-1 dilation-1
  Convolution gets 31/absmax, as ncnn2table does ("int8 winograd F43 needs weight data to use 6bit quantization");
- activation scales: one per quantized layer, for its input blob, from the calibration samples run through the
  fp32 net: KL divergence (ncnn2table's default: absmax pass, then a 2048-bin histogram of |x|/absmax without
  exact zeros, threshold bin searched in [128, 2048), scale 127/threshold), ACIQ or min-max. One deviation:
  where KL's threshold would saturate more than ``kl_max_saturation`` of a blob's nonzero calibration values,
  that blob gets min-max (recorded in ``ScaleTable.notes``). KL assumes a smooth distribution; on few-valued
  or saturated data it fails: digits_cnn's input (pixels k/16) gets a threshold of 1/16, saturating 93% of the
  pixels, and held-out int8 accuracy falls to 17% (fp32: 98.7%); with the fallback it is 99.1%;
- weights become int8 codes (round half away from zero, clamp to +-127: ncnn's float2int8), then the layer
  loads its weight scales and input scale: Convolution int8_scale_term 2, ConvolutionDepthWise 1, InnerProduct 2;
- requantize fusion (ncnn2int8's fuse_requantize): a conv whose output only feeds int8 convs, directly or through
  a Split, gets +100 and its consumer's input scale as output scale, so int8 flows from one to the next.

Gemm, MultiHeadAttention and RNN/LSTM/GRU get ncnn2int8's weight-only int8 (``_ncnn_quant_weights``: they
quantize their inputs at run time). Every other layer keeps its fp32 weights byte for byte (ncnn2int8 also
quantizes Embed, and rewrites unquantized layers as fp16); the backend's precision audit lists what stayed
fp32 and why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.backends._ncnn_param import (
    BinLayout,
    ParamFile,
    ParamLayer,
    WeightBlob,
    int8_blob,
    raw_blob,
    read_bin,
    read_param,
)
from harness.backends._ncnn_quant_weights import (
    WEIGHT_ONLY_TYPES,
    quantize_to_int8,
    quantize_weight_only,
    weight_only_reason,
)

if TYPE_CHECKING:
    import numpy as np


QUANT_TYPES = frozenset({"Convolution", "ConvolutionDepthWise", "InnerProduct"})
CONV_TYPES = frozenset({"Convolution", "ConvolutionDepthWise"})
METHODS = {"kl": "KL", "aciq": "ACIQ", "minmax": "min-max"}
HIST_BINS, TARGET_BINS = 2048, 128


@dataclass(frozen=True)
class QuantSettings:
    """How to quantize: calibration ``method`` (kl, aciq, minmax), ncnn2table's 6-bit rule for 3x3 stride-1
    convs, requantize fusion, and layer names to keep fp32."""

    method: str = "kl"
    conv3x3s1_6bit: bool = True
    fuse_requantize: bool = True
    keep_fp32: tuple[str, ...] = ()
    kl_max_saturation: float | None = 0.05
    weight_only: bool = True
    """Also give Gemm, MultiHeadAttention and RNN/LSTM/GRU ncnn2int8's weight-only int8."""
    """KL thresholds saturating more than this share of a blob's nonzero values fall back to min-max (None: never)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown calibration method {self.method!r}; choose one of {', '.join(METHODS)}")

    @property
    def label(self) -> str:
        """The quantizer's name in records: ``harness-python (KL)``."""
        return f"harness-python ({METHODS[self.method]})"


@dataclass(frozen=True)
class ScaleTable:
    """Per quantized layer: weight scales (per output channel or group) and the scale of its input blob."""

    weights: Mapping[str, np.ndarray] = field(default_factory=dict)
    inputs: Mapping[str, float] = field(default_factory=dict)
    notes: Mapping[str, str] = field(default_factory=dict)
    """Layer -> how its input scale deviates from the method (not part of ncnn2table's file format)."""

    def save(self, path: Path) -> None:
        """Write ncnn2table's text format (``<layer>_param_0 s...`` then ``<layer> s``): ncnn2int8 reads it."""
        lines = [f"{name}_param_0 " + " ".join(f"{v:.9g}" for v in s) for name, s in self.weights.items()]
        lines += [f"{name} {v:.9g}" for name, v in self.inputs.items()]
        Path(path).write_text("\n".join(lines) + "\n")

    @classmethod
    def read(cls, path: Path) -> ScaleTable:
        """Parse a table written by ncnn2table or ``save`` (a key with ``_param_`` is a weight line)."""
        import numpy as np

        weights, inputs = {}, {}
        for line in Path(path).read_text().splitlines():
            tok = line.split()
            if not tok or tok[0].startswith("#"):
                continue
            values = np.array([float(v) for v in tok[1:]], np.float32)
            if "_param_" in tok[0]:
                weights[tok[0].rsplit("_param_", 1)[0]] = values
            else:
                inputs[tok[0]] = float(values[0])
        return cls(weights, inputs)


def weight_scales(la: ParamLayer, w: np.ndarray, conv3x3s1_6bit: bool = True) -> np.ndarray:
    """127/absmax per output channel (per group for depthwise); 31/absmax for a 3x3 stride-1 Convolution."""
    import numpy as np

    rows = la.geti(7, 1) if la.type == "ConvolutionDepthWise" else la.geti(0)
    absmax = np.abs(w.reshape(rows, -1)).max(axis=1)
    g = la.geti
    kernel = (g(1), g(11, g(1)), g(2, 1), g(12, g(2, 1)), g(3, 1), g(13, g(3, 1)))  # k, dilation, stride (w, h)
    qmax = 31.0 if conv3x3s1_6bit and la.type == "Convolution" and kernel == (3, 3, 1, 1, 1, 1) else 127.0
    return np.where(absmax > 0, qmax / np.maximum(absmax, 1e-30), 1.0).astype(np.float32)


def kl_threshold_bin(hist: np.ndarray, target_bin: int = TARGET_BINS) -> int:
    """ncnn2table's KL search: the clip bin count in [target_bin, len(hist)) whose target_bin-level
    quantization keeps the distribution closest (vectorized per candidate with cumulative sums)."""
    import numpy as np

    nbins, eps = len(hist), 1e-4
    p = hist / max(float(hist.sum()), 1.0)
    cum = np.concatenate([[0.0], np.cumsum(p)])

    def mass(x: np.ndarray) -> np.ndarray:  # histogram mass in [0, x), linear inside a bin
        i = np.minimum(np.floor(x).astype(np.int64), nbins - 1)
        return cum[i] + (x - i) * p[i]

    best, best_kl = target_bin, math.inf
    for t in range(target_bin, nbins):
        per = t / target_bin
        edges = np.arange(target_bin + 1) * per
        edges[-1] = t
        q = np.diff(mass(edges)) / per  # mean density of each merged bin (the clipped tail excluded)
        qcum = np.concatenate([[0.0], np.cumsum(q * per)])
        pos = np.arange(t + 1) / per
        j = np.minimum(np.floor(pos).astype(np.int64), target_bin - 1)
        expanded = np.diff(qcum[j] + (pos - j) * per * q[j]) + eps
        clip = p[:t] + eps
        clip[-1] += p[t:].sum()
        kl = float(np.sum(clip * np.log(clip / expanded)))
        if kl < best_kl:
            best, best_kl = t, kl
    return best


def aciq_threshold(absmax: float, n: int, num_bits: int = 8) -> float:
    """ncnn2table's ACIQ clipping threshold (Gaussian prior) for a blob of n values."""
    alpha = (0, 1.71063519, 2.15159277, 2.55913646, 2.93620062, 3.28691474, 3.6151146, 3.92403714)
    gaussian_const = (0.5 * 0.35) * (1 + math.sqrt(math.pi * math.log(4)))
    return alpha[num_bits - 1] * (absmax * 2 * gaussian_const) / math.sqrt(2 * math.log(n))


def extract(net: Any, feed: Mapping[str, np.ndarray], blobs: Sequence[str]) -> dict[str, np.ndarray]:
    """One fp32 inference returning copies of the named blobs (inputs are answered from ``feed``: ncnn
    crashes extracting an input blob after others; light mode is off so every blob stays readable)."""
    import ncnn
    import numpy as np

    ex = net.create_extractor()
    ex.set_light_mode(False)
    mats = {k: ncnn.Mat(v) for k, v in feed.items()}  # Mats borrow the feed's arrays, which outlive them here
    for name, mat in mats.items():
        if (ret := ex.input(name, mat)) != 0:
            raise RuntimeError(f"ncnn Extractor.input({name!r}) returned {ret}")
    out = {}
    for b in blobs:
        if b in feed:
            out[b] = np.asarray(feed[b], np.float32)
            continue
        ret, mat = ex.extract(b)
        if ret != 0:
            raise RuntimeError(f"ncnn Extractor.extract({b!r}) returned {ret} during calibration")
        out[b] = np.array(mat).copy()
    ex.clear()
    return out


def kept_fp32(param: ParamFile, layout: BinLayout, settings: QuantSettings) -> dict[str, str]:
    """Layers of a quantizable type that stay fp32, with the reason."""
    kept = {}
    for la, blobs in zip(param.layers, layout.weights, strict=True):
        weight_only = settings.weight_only and la.type in WEIGHT_ONLY_TYPES
        if la.type not in QUANT_TYPES and not weight_only:
            continue
        if la.name in settings.keep_fp32:
            kept[la.name] = "kept fp32 on request"
        elif blobs is None:
            kept[la.name] = layout.unsized.get(la.name, "its weights were not located in the .bin")
        elif weight_only:
            if (why := weight_only_reason(la)) is not None:
                kept[la.name] = why
        elif la.geti(19):
            kept[la.name] = "its weights are a runtime input (dynamic_weight)"
        elif la.geti(8):
            kept[la.name] = "already carries int8 scales"
    return kept


def calibrate(param: ParamFile, layout: BinLayout, net: Any, samples: Sequence[Mapping[str, np.ndarray]],
              settings: QuantSettings) -> ScaleTable:
    """Weight scales and input-blob scales of every quantizable layer, from ``samples`` run through ``net``
    (the fp32 model; samples map ncnn input blob names to arrays without the batch axis)."""
    import numpy as np

    if not samples:
        raise ValueError("ncnn int8 calibration needs at least one sample")
    kept = kept_fp32(param, layout, settings)
    weights: dict[str, np.ndarray] = {}
    targets: dict[str, str] = {}  # layer -> its input blob
    for la, blobs in zip(param.layers, layout.weights, strict=True):
        if la.type in QUANT_TYPES and la.name not in kept and blobs:
            weights[la.name] = weight_scales(la, blobs[0].to_float(), settings.conv3x3s1_6bit)
            targets[la.name] = la.bottoms[0]
    names = sorted(set(targets.values()))
    absmax, numel = dict.fromkeys(names, 0.0), dict.fromkeys(names, 2)
    for feed in samples:
        for b, a in extract(net, feed, names).items():
            absmax[b] = max(absmax[b], float(np.abs(a).max(initial=0.0)))
            numel[b] = max(a.size, 2)
    scale = {b: 127.0 / absmax[b] if absmax[b] > 0 else 1.0 for b in names}  # min-max
    notes: dict[str, str] = {}
    if settings.method == "aciq":
        scale = {b: 127.0 / aciq_threshold(absmax[b], numel[b]) if absmax[b] > 0 else 1.0 for b in names}
    elif settings.method == "kl":
        hists = {b: np.zeros(HIST_BINS, np.int64) for b in names}
        for feed in samples:
            for b, a in extract(net, feed, names).items():
                v = np.abs(a[a != 0]).astype(np.float32)
                if absmax[b] > 0 and v.size:
                    idx = np.minimum((v / np.float32(absmax[b]) * HIST_BINS).astype(np.int64), HIST_BINS - 1)
                    hists[b] += np.bincount(idx, minlength=HIST_BINS)
        for b in names:
            t = kl_threshold_bin(hists[b])
            saturated = float(hists[b][t:].sum()) / max(float(hists[b].sum()), 1.0)
            limit = settings.kl_max_saturation
            if limit is not None and saturated > limit:  # keep min-max
                notes[b] = (f"KL threshold {(t + 0.5) / HIST_BINS:.3g} x absmax would saturate {saturated:.1%} "
                            f"of the nonzero calibration values (> {limit:.0%}): min-max scale used")
                continue
            threshold = (t + 0.5) * absmax[b] / HIST_BINS
            scale[b] = 127.0 / threshold if threshold > 0 else 1.0
    return ScaleTable(weights, {name: scale[b] for name, b in targets.items()},
                      {name: notes[b] for name, b in targets.items() if b in notes})


def quantize(param: ParamFile, layout: BinLayout, table: ScaleTable,
             settings: QuantSettings) -> tuple[ParamFile, BinLayout, list[str]]:
    """The int8 model: int8 weights plus scale buffers for every layer in ``table``; returns the new param,
    the new .bin layout and the names of the layers quantized."""
    import numpy as np

    layers = list(param.layers)
    weights = list(layout.weights)
    done: set[str] = set()
    kept = kept_fp32(param, layout, settings)
    for i, la in enumerate(layers):
        blobs = weights[i]
        if settings.weight_only and la.type in WEIGHT_ONLY_TYPES and blobs and la.name not in kept:
            layers[i], weights[i] = quantize_weight_only(la, blobs)
            done.add(la.name)
        if la.name not in table.inputs or not blobs:
            continue
        ws = np.asarray(table.weights[la.name], np.float32)
        codes = quantize_to_int8(blobs[0].to_float().reshape(len(ws), -1), ws[:, None])
        weights[i] = (int8_blob(codes.ravel()), *blobs[1:], raw_blob(ws), raw_blob(np.array([table.inputs[la.name]])))
        layers[i] = la.with_param(8, 1 if la.type == "ConvolutionDepthWise" else 2)
        done.add(la.name)
    if settings.fuse_requantize:
        _fuse_requantize(layers, weights, table, done)
    out_layout = BinLayout(tuple(weights), layout.opaque, layout.unsized)
    return ParamFile(tuple(layers), param.blob_count), out_layout, [la.name for la in layers if la.name in done]


def _fuse_requantize(layers: list[ParamLayer], weights: list[tuple[WeightBlob, ...] | None], table: ScaleTable,
                     done: set[str]) -> None:
    """ncnn2int8's fuse_requantize: an int8 conv whose output feeds only int8 convs (directly, or through a
    Split all of whose outputs do) writes int8 at its consumer's input scale (+100, one more scale buffer)."""
    import numpy as np

    consumers: dict[str, list[ParamLayer]] = {}
    for la in layers:
        for b in la.bottoms:
            consumers.setdefault(b, []).append(la)

    def int8_conv_reading(blob: str) -> ParamLayer | None:
        c = consumers.get(blob, [])
        ok = len(c) == 1 and c[0].type in CONV_TYPES and c[0].name in done and len(c[0].bottoms) == 1
        return c[0] if ok else None

    for i, la in enumerate(layers):
        if la.type not in CONV_TYPES or la.name not in done:
            continue
        nxt = int8_conv_reading(la.tops[0])
        if nxt is None:
            c = consumers.get(la.tops[0], [])
            if len(c) == 1 and c[0].type == "Split":
                readers = [int8_conv_reading(t) for t in c[0].tops]
                nxt = readers[0] if readers and all(r is not None for r in readers) else None
        if nxt is not None:
            layers[i] = la.with_param(8, la.geti(8) + 100)
            weights[i] = (*(weights[i] or ()), raw_blob(np.array([table.inputs[nxt.name]])))


def ptq(param_in: Path, param_out: Path, net: Any, samples: Sequence[Mapping[str, np.ndarray]],
        settings: QuantSettings) -> dict[str, Any]:
    """Calibrate and quantize ``param_in`` (+ .bin) into ``param_out`` (+ .bin, + .table with the scales);
    returns what was quantized and what was kept fp32 (layer -> reason)."""
    param = read_param(param_in)
    layout = read_bin(param_in.with_suffix(".bin"), param.layers)
    table = calibrate(param, layout, net, samples, settings)
    qparam, qlayout, done = quantize(param, layout, table, settings)
    qparam.write(param_out)
    qlayout.write(param_out.with_suffix(".bin"))
    table.save(param_out.with_suffix(".table"))
    return {"quantized_layers": len(done), "kept_fp32": kept_fp32(param, layout, settings),
            "calibration_notes": dict(table.notes)}
