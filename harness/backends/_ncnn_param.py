"""ncnn model files as data: the text .param (parse, rewrite) and the .bin split into each layer's weight buffers.

From ncnn's docs (developer-guide/param-and-model-file-structure.md, operation-param-weight-table.md) and each
layer's ``load_model``: a .param is the magic line ``7767517``, ``layer_count blob_count``, then one layer per
line ``type name n_in n_out bottoms... tops... key=value...``. The .bin concatenates the buffers every layer
loads, in layer order, each padded to 4 bytes. A buffer loaded with ``mb.load(n, 0)`` starts with a 4-byte tag
(0 fp32, fp16, bf16, int8, or a 256-entry table); one loaded with ``mb.load(n, 1)`` is n raw float32 values.
Param values stay text, so a rewritten .param keeps every token it did not change.

A .bin has no index: splitting it needs each layer type's load order (``weight_spec``). Where a type is not
known here, the layers after it are found by walking back from the end of the file, and the span between is
kept as opaque bytes (its layers are not located, so they cannot be quantized, and are copied unchanged).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

MAGIC = "7767517"
TAG_FP32, TAG_FP32_SCALED, TAG_FP16, TAG_BF16, TAG_INT8 = 0, 0x0002C056, 0x01306B47, 0x01348B83, 0x000D4B38
CONV_FAMILY = frozenset({
    "Convolution", "ConvolutionDepthWise", "Convolution1D", "ConvolutionDepthWise1D", "Convolution3D",
    "ConvolutionDepthWise3D", "Deconvolution", "DeconvolutionDepthWise", "Deconvolution1D",
    "DeconvolutionDepthWise1D", "Deconvolution3D", "DeconvolutionDepthWise3D"})
NO_WEIGHTS = frozenset((
    "Input Split Concat Slice Crop Eltwise BinaryOp UnaryOp ReLU ReLU6 Clip Sigmoid HardSigmoid HardSwish Swish "
    "Mish GELU ELU SELU CELU TanH AbsVal BNLL Exp Log Power Erf Softplus Threshold Pooling Pooling1D Pooling3D "
    "Flatten Reshape Permute Squeeze ExpandDims Softmax LogSoftmax Dropout Noop Interp ShuffleChannel "
    "PixelShuffle Reorg Reduction Tile Cast ArgMax MatMul Fold Unfold GridSample CopyTo Flip CumulativeSum "
    "Einsum LRN MVN Shrink Diag Packing SDPA RotaryEmbed DetectionOutput Yolov3DetectionOutput "
    "YoloDetectionOutput PriorBox Proposal ROIPooling ROIAlign PSROIPooling Spectrogram").split())


class UnsizedLayer(ValueError):
    """A layer type whose weight layout in the .bin is not known here."""


@dataclass(frozen=True)
class ParamLayer:
    """One layer line of a .param file; ``params`` maps the key text (``"8"``, ``"-23309"``) to the value text."""

    type: str
    name: str
    bottoms: tuple[str, ...] = ()
    tops: tuple[str, ...] = ()
    params: Mapping[str, str] = field(default_factory=dict)

    def geti(self, key: int, default: int = 0) -> int:
        """Integer value of a scalar param key (ncnn writes some ints as floats)."""
        value = self.params.get(str(key))
        return default if value is None else int(float(value))

    def with_param(self, key: int, value: int | str) -> ParamLayer:
        """A copy with one param key set."""
        return replace(self, params={**self.params, str(key): str(value)})

    def line(self) -> str:
        """The layer's line in ncnn's text format."""
        head = f"{self.type:<24} {self.name:<24} {len(self.bottoms)} {len(self.tops)}"
        body = " ".join([*self.bottoms, *self.tops, *(f"{k}={v}" for k, v in self.params.items())])
        return f"{head} {body}".rstrip()


@dataclass(frozen=True)
class ParamFile:
    """A whole .param: its layers in file order and the blob count of the header."""

    layers: tuple[ParamLayer, ...]
    blob_count: int

    def write(self, path: Path) -> None:
        """Write in ncnn's text format."""
        lines = [MAGIC, f"{len(self.layers)} {self.blob_count}", *(la.line() for la in self.layers)]
        path.write_text("\n".join(lines) + "\n")


def read_param(path: Path) -> ParamFile:
    """Parse a text .param; ValueError naming the file when it is not one."""
    lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    if not lines or lines[0] != MAGIC:
        raise ValueError(f"{path}: not an ncnn text .param (first line {lines[0] if lines else ''!r}, want {MAGIC})")
    layer_count, blob_count = (int(t) for t in lines[1].split())
    layers = []
    for ln in lines[2:]:
        tok = ln.split()
        nb, nt = int(tok[2]), int(tok[3])
        params = dict(kv.split("=", 1) for kv in tok[4 + nb + nt:] if "=" in kv)
        layers.append(ParamLayer(tok[0], tok[1], tuple(tok[4:4 + nb]), tuple(tok[4 + nb:4 + nb + nt]), params))
    if len(layers) != layer_count:
        raise ValueError(f"{path}: header says {layer_count} layers, the file has {len(layers)}")
    return ParamFile(tuple(layers), blob_count)


@dataclass(frozen=True)
class WeightBlob:
    """One buffer of the .bin: ``tag`` None for an untagged raw float32 buffer; ``payload`` follows the tag."""

    tag: int | None
    count: int
    payload: bytes

    def to_bytes(self) -> bytes:
        """The buffer as stored (tag, data, padding)."""
        return (b"" if self.tag is None else struct.pack("<I", self.tag)) + self.payload

    def to_float(self) -> np.ndarray:
        """The values as float32 (fp32, fp16, bf16 and 256-entry table storage)."""
        import numpy as np

        p, n = self.payload, self.count
        if self.tag in (None, TAG_FP32, TAG_FP32_SCALED):
            return np.frombuffer(p, "<f4", n).copy()
        if self.tag == TAG_FP16:
            return np.frombuffer(p, "<f2", n).astype(np.float32)
        if self.tag == TAG_BF16:
            return (np.frombuffer(p, "<u2", n).astype(np.uint32) << 16).view(np.float32)
        if self.tag == TAG_INT8:
            raise ValueError("this buffer already holds int8 weights")
        return np.frombuffer(p, "<f4", 256)[np.frombuffer(p, np.uint8, n, offset=1024)].astype(np.float32)


def raw_blob(values: np.ndarray) -> WeightBlob:
    """An untagged float32 buffer (what ``mb.load(n, 1)`` reads: biases, int8 scales)."""
    import numpy as np

    a = np.ascontiguousarray(values, dtype="<f4").ravel()
    return WeightBlob(None, a.size, a.tobytes())


def int8_blob(codes: np.ndarray) -> WeightBlob:
    """A tagged int8 buffer, zero-padded to 4 bytes (ncnn's modelwriter)."""
    data = codes.astype("i1").tobytes()
    return WeightBlob(TAG_INT8, len(data), data + b"\0" * (_align4(len(data)) - len(data)))


def weight_spec(la: ParamLayer) -> list[tuple[bool, int]]:
    """(tagged, element count) of every buffer ``la.load_model`` reads, in order; UnsizedLayer if unknown."""
    t, g = la.type, la.geti
    if t in NO_WEIGHTS:
        return []
    if t in CONV_FAMILY:
        if g(19):  # dynamic_weight: the weights are a second input
            return []
        spec = [(True, g(6))] + ([(False, g(0))] if g(5) else [])
        term = g(8)
        if term and t == "Convolution":
            spec += [(False, g(0)), (False, 1)]
        elif term and t == "ConvolutionDepthWise":
            spec += [(False, g(7, 1) if term in (1, 101) else 1), (False, 1)]
        elif term:
            raise UnsizedLayer(f"{t} {la.name!r}: int8_scale_term on this type is not sized here")
        return spec + ([(False, 1)] if term > 100 else [])
    if t == "InnerProduct":
        spec = [(True, g(2))] + ([(False, g(0))] if g(1) else [])
        return spec + ([(False, g(0)), (False, 1)] if g(8) else [])
    if t in ("LSTM", "GRU", "RNN"):
        return _recurrent_spec(la)
    if t == "MultiHeadAttention":
        embed, term = g(0), g(18)
        qdim, kdim, vdim = g(2) // max(embed, 1), g(3, embed), g(4, embed)
        if term and term != 2:
            raise UnsizedLayer(f"MultiHeadAttention {la.name!r}: quantize_term {term} is not sized here")
        spec = [(True, embed * qdim), (False, embed), (True, embed * kdim), (False, embed),
                (True, embed * vdim), (False, embed), (True, qdim * embed), (False, qdim)]
        return spec + ([(False, embed)] * 3 + [(False, 1)] if term else [])
    if t == "Gemm":
        return _gemm_spec(la)
    if t == "Embed":
        return [(True, g(3))] + ([(False, g(0))] if g(2) else []) + ([(False, 1)] if g(18) else [])
    if t == "BatchNorm":
        return [(False, g(0))] * 4
    if t == "Scale":
        return [] if g(0) == -233 else [(False, g(0))] * (2 if g(1) else 1)
    if t in ("PReLU", "Bias"):
        return [(False, g(0))]
    if t in ("LayerNorm", "InstanceNorm"):
        return [(False, g(0))] * 2 if g(2, 1) else []
    if t == "RMSNorm":
        return [(False, g(0))] if g(2, 1) else []
    if t == "GroupNorm":
        return [(False, g(1))] * 2 if g(3, 1) else []
    if t == "Normalize":
        return [(False, g(3))]
    if t == "Padding":
        return [(False, g(6))] if g(6) else []
    if t == "MemoryData":
        w, h, d, c = g(0), g(1), g(11), g(2)
        n = w * max(h, 1) * max(d, 1) * max(c, 1) if w else 0
        return [(g(21, 1) == 0, n)] if n else []
    raise UnsizedLayer(f"the weight layout of layer type {t!r} (layer {la.name!r}) is not known here")


def _recurrent_spec(la: ParamLayer) -> list[tuple[bool, int]]:
    """LSTM / GRU / RNN: input weights, biases, hidden weights (+ LSTM projection), then int8 scales."""
    g, gates = la.geti, {"LSTM": 4, "GRU": 3, "RNN": 1}[la.type]
    out, dirs = g(0), 2 if g(2) == 2 else 1
    hidden = g(3, out) if la.type == "LSTM" else out
    size = g(1) // dirs // max(hidden, 1) // gates
    bias_rows = {"LSTM": 4, "GRU": 4, "RNN": 1}[la.type]
    spec = [(True, size * hidden * gates * dirs), (True, hidden * bias_rows * dirs),
            (True, out * hidden * gates * dirs)]
    if la.type == "LSTM" and out != hidden:
        spec.append((True, hidden * out * dirs))
    return spec + ([(False, hidden * gates * dirs)] * 2 if g(8) else [])


def _gemm_spec(la: ParamLayer) -> list[tuple[bool, int]]:
    """Gemm: constant A, B, C (C's size by its broadcast type), then the int8 scales of A and B."""
    g = la.geti
    m, n, k, term = g(7), g(8), g(9), g(18)
    if term >= 100:
        raise UnsizedLayer(f"Gemm {la.name!r}: block-quantized weights (quantize_term {term}) are not sized here")
    spec = [(True, m * k)] if g(4) else []
    spec += [(True, k * n)] if g(5) else []
    broadcast = g(10)
    if g(6) and broadcast != -1:
        spec.append((True, {0: 1, 1: m, 2: m, 3: m * n, 4: n}[broadcast]))
    if term:
        spec += ([(False, m)] if g(4) else []) + ([(False, 1)] if g(5) else [])
    return spec


@dataclass(frozen=True)
class BinLayout:
    """A .bin split per layer. ``weights[i]`` is None for layers inside the span no sizing rule covers; that
    span's bytes are ``opaque`` and are written where its first layer stands."""

    weights: tuple[tuple[WeightBlob, ...] | None, ...]
    opaque: bytes = b""
    unsized: Mapping[str, str] = field(default_factory=dict)
    """Layer name -> why its weights could not be located."""

    def write(self, path: Path) -> None:
        """Concatenate every buffer (and the opaque span) into a .bin."""
        with Path(path).open("wb") as f:
            opaque_written = False
            for blobs in self.weights:
                if blobs is None:
                    if not opaque_written:
                        f.write(self.opaque)
                        opaque_written = True
                    continue
                for b in blobs:
                    f.write(b.to_bytes())


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _tagged_size(tag: int, n: int) -> int:
    sizes = {TAG_FP32: 4 * n, TAG_FP32_SCALED: 4 * n, TAG_FP16: _align4(2 * n), TAG_BF16: _align4(2 * n),
             TAG_INT8: _align4(n)}
    return sizes.get(tag, 1024 + _align4(n))  # any other tag: a 256-float table and one uint8 index per value


def read_bin(path: Path, layers: Sequence[ParamLayer]) -> BinLayout:
    """Split a .bin into each layer's buffers; ValueError when the sizes do not add up to the file."""
    data = Path(path).read_bytes()
    pos, out, first_unsized = 0, [], None
    for i, la in enumerate(layers):
        try:
            spec = weight_spec(la)
        except UnsizedLayer:
            first_unsized = i
            break
        blobs = []
        for tagged, n in spec:
            tag = struct.unpack_from("<I", data, pos)[0] if tagged else None
            pos += 4 if tagged else 0
            size = 4 * n if tag is None else _tagged_size(tag, n)
            if pos + size > len(data):
                raise ValueError(f"{path}: ends inside the weights of {la.type} {la.name!r}; the .param does "
                                 "not describe this .bin")
            blobs.append(WeightBlob(tag, n, data[pos:pos + size]))
            pos += size
        out.append(tuple(blobs))
    if first_unsized is None:
        if pos != len(data):
            raise ValueError(f"{path}: {len(data) - pos} bytes left after the last layer's weights; the .param "
                             "does not describe this .bin")
        return BinLayout(tuple(out))
    tail, end = _read_back(data, layers[first_unsized:], pos)
    if end < pos:
        raise ValueError(f"{path}: weights located from both ends overlap; the .param does not describe this .bin")
    span = layers[first_unsized:len(layers) - len(tail)]
    why = f"its weights follow layer {layers[first_unsized].name!r} ({layers[first_unsized].type}), whose " \
          "weight layout is not known here"
    unsized = {la.name: why for la in span}
    return BinLayout(tuple(out) + (None,) * len(span) + tuple(tail), data[pos:end], unsized)


def _read_back(data: bytes, layers: Sequence[ParamLayer], floor: int) -> tuple[list[tuple[WeightBlob, ...]], int]:
    """Locate the trailing layers' buffers walking back from the end of the file, as far as each step is
    unambiguous (a tagged buffer's size depends on its tag, which is read where that size puts it)."""
    pos, found = len(data), []
    for la in reversed(layers[1:]):
        try:
            spec = weight_spec(la)
        except UnsizedLayer:
            break
        blobs, start = [], pos
        for tagged, n in reversed(spec):
            if not tagged:
                size, tag = 4 * n, None
            else:
                fits = [(t, _tagged_size(t, n)) for t in (TAG_FP32, TAG_FP16, TAG_INT8)
                        if start - _tagged_size(t, n) - 4 >= floor
                        and struct.unpack_from("<I", data, start - _tagged_size(t, n) - 4)[0] == t]
                if len(fits) != 1:
                    return found[::-1], pos
                tag, size = fits[0]
            if start - size - (4 if tagged else 0) < floor:
                return found[::-1], pos
            blobs.append(WeightBlob(tag, n, data[start - size:start]))
            start -= size + (4 if tagged else 0)
        found.append(tuple(reversed(blobs)))
        pos = start
    return found[::-1], pos
