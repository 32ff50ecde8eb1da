"""ncnn plumbing without the engine: params, weight tags, feeds as Mats, and ncnn's own int8 tools.

``ncnn2table`` + ``ncnn2int8`` ship in no pip package: they are looked up in ``$NCNN_TOOLS`` and on PATH
(``_ncnn_quant_build`` chooses between them and the Python port). Calibration feeds are written as ``.npy`` files
(one per sample and input, batch axis removed) with one list file per input, which ncnn2table reads with
``type=1`` (its npy mode; ``shape`` is the npy shape reversed, [w,h,c]).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from harness.backends._ncnn_param import ParamLayer, read_param
from harness.core.errors import ConversionError, UnsupportedPrecision
from harness.core.types import Feeds, TensorSpec

if TYPE_CHECKING:
    import numpy as np

TOOLS = ("ncnn2table", "ncnn2int8")
TOOLS_LABEL = "ncnn2table+ncnn2int8"
INSTALL_HINT = ("build ncnn from source (tools/quantize) and put them on PATH or set NCNN_TOOLS=<dir>")
MISSING_REASON = f"ncnn int8 needs ncnn2table and ncnn2int8 (not shipped in any pip package): {INSTALL_HINT}"

# Layers that do the arithmetic (the ones the precision audit counts) and the
# param key of their int8_scale_term (docs/developer-guide/operators.md).
COMPUTE_LAYERS = {
    "Convolution", "ConvolutionDepthWise", "Convolution1D", "ConvolutionDepthWise1D", "Convolution3D",
    "ConvolutionDepthWise3D", "Deconvolution", "DeconvolutionDepthWise", "Deconvolution1D", "Deconvolution3D",
    "DeconvolutionDepthWise1D", "DeconvolutionDepthWise3D", "InnerProduct", "Gemm", "MatMul",
    "MultiHeadAttention", "SDPA", "LSTM", "GRU", "RNN", "Embed",
}
INT8_SCALE_KEY = {"Gemm": "18", "MultiHeadAttention": "18", "Embed": "18", "SDPA": "18"}  # others: "8"
FP16_TAG, INT8_TAG = 0x01306B47, 0x000D4B38  # ncnn ModelBin tags that precede fp16 / int8 weight blobs
TOOLS_QUANTIZE = frozenset({"Convolution", "ConvolutionDepthWise", "InnerProduct", "RNN", "LSTM", "GRU", "Embed",
                            "Gemm", "MultiHeadAttention"})
"""The layer types ncnn2int8 quantizes (tools/quantize/ncnn2int8.cpp)."""
RUNTIME_QUANTIZED = frozenset({"Gemm", "MultiHeadAttention"})
"""Types whose int8 weights select the int8 kernels by themselves (seen: same output with use_int8_inference off)."""

Layer = ParamLayer


def parse_param(path: Path) -> list[Layer]:
    """The layers of a text .param file (magic line, counts line, one layer per line)."""
    return list(read_param(path).layers)


def unregistered_layers(layers: Sequence[Layer]) -> list[Layer]:
    """Layers whose type this ncnn build does not implement (pnnx leaves e.g. ``torch.argmax`` as is)."""
    import ncnn

    return [la for la in layers if ncnn.layer_to_index(la.type) < 0]


def int8_layer_counts(layers: Sequence[Layer]) -> Counter[str]:
    """Compute layers by precision: int8 when ncnn2int8 set their int8_scale_term, else fp32."""
    counts: Counter[str] = Counter()
    for la in layers:
        if la.type in COMPUTE_LAYERS:
            term = la.params.get(INT8_SCALE_KEY.get(la.type, "8"), "0")
            counts["int8" if term not in ("0", "") else "fp32"] += 1
    return counts


def weight_tags(bin_path: Path) -> dict[str, int]:
    """How many weight blobs the .bin stores as fp16 / int8 (their ModelBin tags; untagged blobs are fp32)."""
    import numpy as np

    words = np.fromfile(bin_path, dtype="<u4")
    return {"fp16": int(np.count_nonzero(words == FP16_TAG)), "int8": int(np.count_nonzero(words == INT8_TAG))}


def as_mat_array(arr: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """A C-contiguous float32 array ncnn.Mat can wrap; integer ids are bit-cast int32 -> float32 (ncnn Embed)."""
    import numpy as np

    if spec.is_integer:
        return np.ascontiguousarray(arr, dtype=np.int32).view(np.float32)
    return np.ascontiguousarray(arr, dtype=np.float32)


def find_tools() -> dict[str, Path]:
    """Paths of ncnn2table and ncnn2int8 (``$NCNN_TOOLS`` first, then PATH); UnsupportedPrecision if absent."""
    env = os.environ.get("NCNN_TOOLS")
    if env:
        folder = Path(env).expanduser()
        found = {t: folder / t for t in TOOLS if (folder / t).is_file() and os.access(folder / t, os.X_OK)}
        missing = [t for t in TOOLS if t not in found]
        if missing:
            have = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "no such directory"
            raise UnsupportedPrecision(f"NCNN_TOOLS={env} lacks executable {', '.join(missing)} (it holds: {have}); "
                                       f"{MISSING_REASON}")
        return found
    found = {t: Path(p) for t in TOOLS if (p := shutil.which(t)) is not None}
    if len(found) < len(TOOLS):
        missing = [t for t in TOOLS if t not in found]
        raise UnsupportedPrecision(MISSING_REASON if len(missing) == len(TOOLS)
                                   else f"{', '.join(missing)} not found on PATH or in NCNN_TOOLS; {MISSING_REASON}")
    return found


def check_npy_support(ncnn2table: Path) -> None:
    """ncnn2table must know ``type=1`` (npy input); older builds read images only."""
    try:
        proc = subprocess.run([str(ncnn2table)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UnsupportedPrecision(f"could not run {ncnn2table}: {exc}; {MISSING_REASON}") from exc
    usage = proc.stdout + proc.stderr
    if "type=" not in usage:
        raise UnsupportedPrecision(f"{ncnn2table} has no npy input mode (its usage text lacks 'type=0/1'); "
                                   f"rebuild it from a current ncnn source tree (tools/quantize)")


def calibration_items(calibration: Sequence[Feeds], inputs: Sequence[TensorSpec]) -> list[dict[str, np.ndarray]]:
    """Calibration feeds as ncnn samples: one per batch element, ``in0``.. -> array without the batch axis,
    each input keeping one shape (KL histograms and ncnn2table's ``shape=`` need it)."""
    import numpy as np

    items: list[dict[str, np.ndarray]] = []
    shapes: dict[str, tuple[int, ...]] = {}
    for feeds in calibration:
        arrays = [np.asarray(feeds[t.name]) for t in inputs]
        for b in range(max(a.shape[0] for a in arrays)):
            item = {}
            for i, (t, arr) in enumerate(zip(inputs, arrays, strict=True)):
                mat = as_mat_array(arr[b if arr.shape[0] > 1 else 0], t)
                if shapes.setdefault(t.name, mat.shape) != mat.shape:
                    raise ConversionError(f"ncnn int8: calibration input {t.name!r} changes shape "
                                          f"({shapes[t.name]} then {mat.shape}); calibration needs one shape per input")
                item[f"in{i}"] = mat
            items.append(item)
    if not items:
        raise ConversionError("ncnn int8: static quantization needs calibration data and none was given")
    return items


def write_calibration(calibration: Sequence[Feeds], inputs: Sequence[TensorSpec], folder: Path) -> tuple[str, str]:
    """Write .npy files and list files; return ncnn2table's list argument and ``shape=`` value."""
    import numpy as np

    (folder / "cal").mkdir(parents=True, exist_ok=True)
    items = calibration_items(calibration, inputs)
    list_names = []
    for i in range(len(inputs)):
        names = [f"cal/in{i}_{k:05d}.npy" for k in range(len(items))]
        for name, item in zip(names, items, strict=True):
            np.save(folder / name, item[f"in{i}"])
        (folder / f"list{i}.txt").write_text("\n".join(names) + "\n")
        list_names.append(f"list{i}.txt")
    shape_arg = ",".join("[" + ",".join(str(d) for d in reversed(items[0][f"in{i}"].shape)) + "]"
                         for i in range(len(inputs)))
    return ",".join(list_names), shape_arg


def table_command(tool: Path, param: Path, bin_: Path, lists: str, table: str, shapes: str, threads: int) -> list[str]:
    """ncnn2table argv for npy calibration input (KL-divergence thresholds)."""
    return [str(tool), str(param), str(bin_), lists, table, f"shape={shapes}", "method=kl", "type=1",
            f"thread={threads}"]


def int8_command(tool: Path, param: Path, bin_: Path, out_param: Path, out_bin: Path, table: str) -> list[str]:
    """ncnn2int8 argv: fp32 model + calibration table -> int8 model."""
    return [str(tool), str(param), str(bin_), str(out_param), str(out_bin), table]


def run_tool(argv: list[str], cwd: Path, expect: Sequence[Path], timeout: float = 3600) -> str:
    """Run one tool; ConversionError with its output unless it exits 0 and writes every ``expect`` file."""
    name = Path(argv[0]).name
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ConversionError(f"ncnn int8: {name} did not finish in {timeout:.0f} s") from exc
    log = (proc.stdout + proc.stderr).strip()
    missing = [p.name for p in expect if not p.is_file() or p.stat().st_size == 0]
    if proc.returncode != 0 or missing:
        what = f"exited {proc.returncode}" if proc.returncode != 0 else f"wrote no {', '.join(missing)}"
        raise ConversionError(f"ncnn int8: {name} {what}: {log[-1500:] or '(no output)'} [argv: {' '.join(argv)}]")
    return log


def quantize(tools: dict[str, Path], param: Path, bin_: Path, out_param: Path, calibration: Sequence[Feeds],
             inputs: Sequence[TensorSpec], threads: int) -> None:
    """fp32 ncnn model -> int8 model at ``out_param`` (+ ``.bin``) via ncnn2table and ncnn2int8."""
    check_npy_support(tools["ncnn2table"])
    work = out_param.parent
    lists, shapes = write_calibration(calibration, inputs, work)
    table = "model.table"
    run_tool(table_command(tools["ncnn2table"], param, bin_, lists, table, shapes, threads), work, [work / table])
    out_bin = out_param.with_suffix(".bin")
    run_tool(int8_command(tools["ncnn2int8"], param, bin_, out_param, out_bin, table), work, [out_param, out_bin])
    shutil.copyfile(work / table, out_param.with_suffix(".table"))
