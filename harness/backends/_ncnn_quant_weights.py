"""Weight-only int8 for the layers that quantize their inputs themselves at run time: what ncnn2int8 does to
Gemm, MultiHeadAttention and RNN/LSTM/GRU (tools/quantize/ncnn2int8.cpp, quantize_gemm / _multiheadattention /
_rnn / _lstm / _gru). These layers find their input scales per row while running, so they need no calibration:
their constant weights become int8 codes with absmax scales (per row; per tensor for Gemm's B and the attention
output projection), the scales follow the layer's other buffers in its ``load_model`` order, and the int8 flag
(Gemm/MultiHeadAttention key 18, recurrent layers key 8) is set to 2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.backends._ncnn_param import ParamLayer, WeightBlob, int8_blob, raw_blob

if TYPE_CHECKING:
    import numpy as np

WEIGHT_ONLY_TYPES = frozenset({"Gemm", "MultiHeadAttention", "LSTM", "GRU", "RNN"})
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def weight_only_reason(la: ParamLayer) -> str | None:
    """Why a layer of these types stays fp32 (None: it can be quantized)."""
    if la.type not in WEIGHT_ONLY_TYPES:
        return f"{la.type} is not a weight-only int8 type"
    if la.geti(18 if la.type in ("Gemm", "MultiHeadAttention") else 8):
        return "already carries int8 weights"
    if la.type == "LSTM" and la.geti(3, la.geti(0)) != la.geti(0):
        return "LSTM with a projection (hidden_size != num_output): ncnn2int8 does not quantize its projection"
    return None


def _row_scales(w: np.ndarray) -> np.ndarray:
    """127/absmax per row (1 for an all-zero row), as ncnn2int8 computes them."""
    import numpy as np

    absmax = np.abs(w).max(axis=1)
    return np.where(absmax > 0, 127.0 / np.maximum(absmax, 1e-30), 1.0).astype(np.float32)


def quantize_to_int8(x: np.ndarray, scale: float | np.ndarray) -> np.ndarray:
    """ncnn's float2int8: round half away from zero, clamp to [-127, 127]."""
    import numpy as np

    v = np.asarray(x, np.float32) * np.asarray(scale, np.float32)
    return np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5), -127, 127).astype(np.int8)


def _codes(w: np.ndarray, scales: np.ndarray) -> WeightBlob:
    return int8_blob(quantize_to_int8(w, scales.reshape(-1, 1) if scales.size > 1 else scales).ravel())


def quantize_weight_only(la: ParamLayer, blobs: tuple[WeightBlob, ...]) -> tuple[ParamLayer, tuple[WeightBlob, ...]]:
    """The int8 version of one Gemm / MultiHeadAttention / RNN / LSTM / GRU layer and its buffers."""
    if la.type == "Gemm":
        return _gemm(la, blobs)
    if la.type == "MultiHeadAttention":
        return _attention(la, blobs)
    return _recurrent(la, blobs)


def _gemm(la: ParamLayer, blobs: tuple[WeightBlob, ...]) -> tuple[ParamLayer, tuple[WeightBlob, ...]]:
    """Constant A: rows of K with per-row scales (transposed to transA=0); constant B: rows of K (transB=1)
    with one scale; C unchanged. Buffers: A, B, C, then A's scales and B's scale."""
    import numpy as np

    g = la.geti
    m, n, k = g(7), g(8), g(9)
    rest = list(blobs)
    out: list[WeightBlob] = []
    tail: list[WeightBlob] = []
    if g(4):
        a = rest.pop(0).to_float()
        a = a.reshape(k, m).T if g(2) else a.reshape(m, k)  # transA=1 stores K rows of M
        scales = _row_scales(a)
        out.append(_codes(a, scales))
        tail.append(raw_blob(scales))
        la = la.with_param(2, 0)
    if g(5):
        b = rest.pop(0).to_float()
        b = b.reshape(n, k) if g(3) else b.reshape(k, n).T  # transB=0 stores K rows of N
        absmax = float(np.abs(b).max(initial=0.0))
        scale = np.array([127.0 / absmax if absmax > 0 else 1.0], np.float32)
        out.append(_codes(b, scale))
        tail.append(raw_blob(scale))
        la = la.with_param(3, 1)
    return la.with_param(18, 2), (*out, *rest, *tail)


def _attention(la: ParamLayer, blobs: tuple[WeightBlob, ...]) -> tuple[ParamLayer, tuple[WeightBlob, ...]]:
    """q/k/v projections: embed_dim rows with per-row scales; output projection: one scale. Buffers: each
    int8 weight with its fp32 bias, then the q, k, v scales and the output scale."""
    import numpy as np

    embed = la.geti(0)
    qw, qb, kw, kb, vw, vb, ow, ob = blobs
    out, scales = [], []
    for w, bias in ((qw, qb), (kw, kb), (vw, vb)):
        rows = w.to_float().reshape(embed, -1)
        s = _row_scales(rows)
        out += [_codes(rows, s), bias]
        scales.append(raw_blob(s))
    o = ow.to_float()
    absmax = float(np.abs(o).max(initial=0.0))
    s_out = np.array([127.0 / absmax if absmax > 0 else 1.0], np.float32)
    out += [_codes(o, s_out), ob]
    return la.with_param(18, 2), (*out, *scales, raw_blob(s_out))


def _recurrent(la: ParamLayer, blobs: tuple[WeightBlob, ...]) -> tuple[ParamLayer, tuple[WeightBlob, ...]]:
    """Input and hidden weights: one row per gate unit and direction, per-row scales; bias unchanged.
    Buffers: xc int8, bias, hc int8, then the xc scales and the hc scales."""
    rows = la.geti(0) * _GATES[la.type] * (2 if la.geti(2) == 2 else 1)
    xc_blob, bias, hc_blob = blobs
    xc, hc = xc_blob.to_float().reshape(rows, -1), hc_blob.to_float().reshape(rows, -1)
    s_xc, s_hc = _row_scales(xc), _row_scales(hc)
    return la.with_param(8, 2), (_codes(xc, s_xc), bias, _codes(hc, s_hc), raw_blob(s_xc), raw_blob(s_hc))
