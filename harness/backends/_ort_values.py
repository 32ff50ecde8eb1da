"""ONNX Runtime values numpy cannot carry natively: bfloat16/float8/int4/int2/float4 tensors through OrtValues."""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.core.types import Feeds

SUB_BYTE_BITS = {"int4": 4, "uint4": 4, "float4_e2m1fn": 4, "int2": 2, "uint2": 2}
"""ml_dtypes names of the element types ORT stores packed (ml_dtypes keeps one per byte)."""



def extended(type_str: str) -> bool:
    """``tensor(bfloat16)``, ``tensor(float8e4m3fn)``...: an element type numpy has no builtin dtype for."""
    return any(t in type_str for t in ("bfloat16", "float8", "int4", "float4", "int2"))


def run_ort_values(session: Any, names: list[str], feeds: Feeds) -> list[Any]:
    """``session.run`` through OrtValues (tensors only on this path): an ml_dtypes array goes in as its bits with
    its ONNX element type (4- and 2-bit types packed as ORT stores them, low bits first, like ONNX's raw data),
    and such outputs come back as ml_dtypes arrays read from the OrtValue's buffer."""
    import ctypes

    import onnxruntime as ort
    from onnx import helper

    values = {}
    for name, v in feeds.items():
        if not isinstance(v, np.ndarray):
            raise TypeError(f"input {name!r}: sequences/optionals beside bfloat16/float8/int4 tensors are not fed")
        a = np.asarray(v, order="C")
        if a.dtype.isbuiltin == 1:
            values[name] = ort.OrtValue.ortvalue_from_numpy(a)
            continue
        elem, bits = helper.np_dtype_to_tensor_dtype(a.dtype), _bits(a.dtype)
        if bits == 8 * a.dtype.itemsize:
            values[name] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(a.view(f"u{a.dtype.itemsize}"), elem)
            continue
        packed = _pack(a, bits)
        value = ort.OrtValue.ortvalue_from_shape_and_type(list(a.shape), elem)
        if value.tensor_size_in_bytes() != packed.nbytes:
            raise ValueError(f"input {name!r}: ORT holds {value.tensor_size_in_bytes()} bytes, packed {packed.nbytes}")
        ctypes.memmove(value.data_ptr(), packed.ctypes.data, packed.nbytes)
        values[name] = value
    out = []
    for value in session.run_with_ort_values(names, values):
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(value.element_type()))
        if dtype.isbuiltin == 1:
            out.append(value.numpy())
            continue
        raw = np.frombuffer(bytes((ctypes.c_uint8 * value.tensor_size_in_bytes()).from_address(value.data_ptr())),
                            np.uint8)
        bits, shape = _bits(dtype), tuple(value.shape())
        out.append(raw.view(dtype).reshape(shape) if bits == 8 * dtype.itemsize else _unpack(raw, bits, shape, dtype))
    return out


def _bits(dtype: np.dtype) -> int:
    """Bits per element as ORT stores it."""
    return SUB_BYTE_BITS.get(dtype.name, 8 * dtype.itemsize)


def _pack(a: np.ndarray, bits: int) -> np.ndarray:
    """Sub-byte elements packed low bits first, padded with zeros to whole bytes."""
    per = 8 // bits
    flat = a.ravel().view(np.uint8) & np.uint8((1 << bits) - 1)
    flat = np.concatenate([flat, np.zeros(-flat.size % per, np.uint8)]).reshape(-1, per)
    return np.bitwise_or.reduce(flat << (np.arange(per, dtype=np.uint8) * bits), axis=1).astype(np.uint8)


def _unpack(raw: np.ndarray, bits: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    per = 8 // bits
    values = (raw[:, None] >> (np.arange(per, dtype=np.uint8) * bits)) & np.uint8((1 << bits) - 1)
    return values.ravel()[:int(np.prod(shape))].astype(np.uint8).reshape(shape).view(dtype)

