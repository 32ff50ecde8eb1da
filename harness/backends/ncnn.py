"""ncnn via pnnx: torch module -> TorchScript trace -> pnnx -> ncnn .param/.bin, run with ncnn's Python API.

fp32 converts with fp32 weights and every fp16/bf16 option off. fp16 stores the
weights as fp16 in the .bin (pnnx ``fp16=1``) and turns on ncnn's fp16 storage,
packed and arithmetic options; the executed precision comes from the CPU
features ncnn reports, the weight tags in the .bin and the layers ncnn built
(x86 has no fp16 arithmetic in ncnn: ``mixed(fp16-storage,fp32-compute)``).
int8 runs ncnn2table + ncnn2int8 (see ``_ncnn_tools``) and counts the layers
ncnn2int8 gave an int8 scale term.

ncnn Mats have no batch axis: pnnx drops axis 0, so a batch > 1 runs one element
at a time and the outputs are stacked. Integer token ids are bit-cast
int32 -> float32 (ncnn Embed). ``ncnn.Mat(ndarray)`` wraps memory without
owning it, so inputs stay referenced until extraction ends and outputs are
copied before the extractor goes away.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from harness.backends import _ncnn_tools as tools
from harness.backends.base import Backend, BoundCall, Session, missing_package_reason
from harness.core.cache import cached, feeds_digest
from harness.core.errors import ConversionError, ExportError, UnsupportedPrecision
from harness.core.machine import module_version
from harness.core.precision import summarize
from harness.core.types import Feeds, Precision, TensorSpec

if TYPE_CHECKING:
    from harness.model.export import ExportedModel

PNNX_TIMEOUT_S = 1800
BATCH_NOTE = "ncnn Mat has no batch axis: batch > 1 runs one element at a time, outputs stacked"
_PNNX_TYPES = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16", "uint8": "u8", "int8": "i8",
               "int16": "i16", "int32": "i32", "int64": "i64", "bool": "i8"}


class NcnnSession(Session):
    def __init__(self, net: Any, inputs: Sequence[TensorSpec], output_names: Sequence[str], out_ranks: Sequence[int],
                 artifact: Path, settings: dict[str, Any], executed: str) -> None:
        self.net = net
        self.inputs = list(inputs)
        self.output_names = list(output_names)
        self.out_ranks = list(out_ranks)
        self.artifact = artifact
        self.settings = settings
        self.executed_precision = executed

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        arrays = [np.asarray(feeds[t.name]) for t in self.inputs]
        n = max((a.shape[0] for a in arrays if a.ndim), default=1)
        if any(a.ndim == 0 or a.shape[0] not in (1, n) for a in arrays):
            shapes = {t.name: a.shape for t, a in zip(self.inputs, arrays, strict=True)}
            raise ValueError(f"ncnn: inputs need a common batch axis 0 (size 1 or {n}); got {shapes}")
        per_item = [self._run_one([a[i if a.shape[0] > 1 else 0] for a in arrays]) for i in range(n)]
        return {name: np.concatenate([outs[k] for outs in per_item], axis=0)
                for k, name in enumerate(self.output_names)}

    def _run_one(self, items: list[np.ndarray]) -> list[np.ndarray]:
        import ncnn

        keep = [tools.as_mat_array(x, t) for x, t in zip(items, self.inputs, strict=True)]  # Mats borrow these
        mats = [ncnn.Mat(a) for a in keep]
        ex = self.net.create_extractor()
        outs = []
        for i, mat in enumerate(mats):
            if (ret := ex.input(f"in{i}", mat)) != 0:
                raise RuntimeError(f"ncnn Extractor.input('in{i}') returned {ret}")
        for k, rank in enumerate(self.out_ranks):
            ret, mat = ex.extract(f"out{k}")
            if ret != 0:
                raise RuntimeError(f"ncnn Extractor.extract('out{k}') returned {ret}")
            out = np.array(mat).copy()  # own the data before the extractor releases its blobs
            while out.ndim < rank:  # pnnx dropped the batch axis
                out = out[None]
            outs.append(out)
        ex.clear()
        del mats, keep
        return outs

    def bind(self, feeds: Feeds) -> BoundCall:
        """The way benchncnn times a net: input Mats made once, one extractor per call (per batch item)
        in light mode with pooled blob/workspace allocators, every output extracted and left in ncnn's
        Mats; OpenMP with dynamic teams off and ``num_threads`` threads (``set_omp_dynamic(0)``,
        ``set_omp_num_threads``: process-wide, as benchncnn sets them at start)."""
        import ncnn

        arrays = [np.asarray(feeds[t.name]) for t in self.inputs]
        n = max((a.shape[0] for a in arrays if a.ndim), default=1)
        keep = [[tools.as_mat_array(a[i if a.ndim and a.shape[0] > 1 else 0], t)
                 for a, t in zip(arrays, self.inputs, strict=True)] for i in range(n)]
        items = [[(f"in{k}", ncnn.Mat(x)) for k, x in enumerate(item)] for item in keep]  # Mats borrow `keep`
        outputs = [f"out{k}" for k in range(len(self.output_names))]
        blobs, workspace = ncnn.UnlockedPoolAllocator(), ncnn.PoolAllocator()
        blobs.set_size_compare_ratio(0.0)  # benchncnn's ratios: exact-size blob reuse, loose workspace reuse
        workspace.set_size_compare_ratio(0.5)
        ncnn.set_omp_dynamic(0)
        ncnn.set_omp_num_threads(int(self.settings.get("threads") or self.net.opt.num_threads))
        net = self.net

        def call() -> list[Any]:
            out: list[Any] = []
            for mats in items:
                ex = net.create_extractor()
                ex.set_light_mode(True)
                ex.set_blob_allocator(blobs)
                ex.set_workspace_allocator(workspace)
                for name, mat in mats:
                    if ex.input(name, mat) != 0:
                        raise RuntimeError(f"ncnn Extractor.input({name!r}) failed")
                out = []
                for name in outputs:
                    ret, mat = ex.extract(name)
                    if ret != 0:
                        raise RuntimeError(f"ncnn Extractor.extract({name!r}) returned {ret}")
                    out.append(mat)  # the last item's outputs, for checks; Mats hold their own reference
                ex.clear()
            return out

        return BoundCall(call, keep=(keep, items, blobs, workspace))

    def close(self) -> None:
        if self.net is not None:
            self.net.clear()
            self.net = None


class NcnnBackend(Backend):
    """Tencent ncnn on CPU, models converted from torch by pnnx."""

    name: ClassVar[str] = "ncnn"
    needs_onnx: ClassVar[bool] = False

    def unavailable_reason(self) -> str | None:
        reason = missing_package_reason("ncnn", "ncnn", "pnnx", "torch")
        if reason is None and not _pnnx_exe().is_file():
            return (f"ncnn: the pnnx package has no converter executable at {_pnnx_exe()} "
                    "(pip install --force-reinstall pnnx)")
        return reason

    def version(self) -> str:
        return module_version("ncnn")

    def unsupported_reason(self, model: ExportedModel, precision: Precision) -> str | None:
        reason = super().unsupported_reason(model, precision)
        if reason is None and precision is Precision.INT8:
            try:
                tools.find_tools()
            except UnsupportedPrecision as exc:
                return str(exc)
        return reason

    def load(self, model: ExportedModel, precision: Precision, workdir: Path,
             calibration: Sequence[Feeds] | None = None) -> Session:
        found = tools.find_tools() if precision is Precision.INT8 else {}
        param, log = self.convert(model, fp16=precision is Precision.FP16)
        settings: dict[str, Any] = {"threads": self.threads, "converter": "torch.jit.trace -> pnnx -> ncnn",
                                    "pnnx_version": module_version("pnnx"), **log, "batch": BATCH_NOTE}
        if any(t.is_integer for t in model.spec.inputs):
            settings["integer_inputs"] = "bit-cast int32 -> float32 for ncnn Embed"
        if precision is Precision.INT8:
            if not calibration:
                raise ConversionError("ncnn int8: static quantization needs calibration data and none was given")
            param = self._int8(model, param, calibration, found)
            settings.update(recipe="ncnn2table (KL, npy calibration type=1) -> ncnn2int8",
                            calibration_samples=len(calibration), tools={k: str(v) for k, v in found.items()})
        net = self._net(param, fp16=precision is Precision.FP16, int8=precision is Precision.INT8)
        _check_blobs(net, model)
        settings["options"] = _options(net.opt)
        settings["cpu"] = cpu_features()
        settings["bin_weight_blobs"] = tools.weight_tags(param.with_suffix(".bin"))
        executed = _executed(precision, param, net, settings)
        ranks = _output_ranks(model)
        return NcnnSession(net, model.spec.inputs, model.output_names, ranks, param, settings, executed)

    def convert(self, model: ExportedModel, fp16: bool) -> tuple[Path, dict[str, Any]]:
        """The pnnx conversion of ``model`` (cached): the .param path and how it was made."""
        path = model.artifact(f"ncnn-{'fp16' if fp16 else 'fp32'}-pnnx{module_version('pnnx')}.ncnn.param")
        meta = path.with_name(path.name.replace(".ncnn.param", ".json"))
        log: dict[str, Any] = {}
        cached(path, lambda tmp: log.update(_pnnx_build(model, tmp, fp16)), extra_files=(".bin",))
        if log:
            meta.write_text(json.dumps(log))
            log["cached"] = False
        elif meta.exists():
            log = {**json.loads(meta.read_text()), "cached": True}
        return path, log

    def _int8(self, model: ExportedModel, param: Path, calibration: Sequence[Feeds],
              found: dict[str, Path]) -> Path:
        digest = hashlib.sha256(param.read_bytes())
        for tool in sorted(found):  # another build of the tools makes another artifact
            digest.update(found[tool].read_bytes())
        key = feeds_digest(calibration, salt=digest.hexdigest(), length=12)
        out = model.artifact(f"ncnn-int8-{key}.ncnn.param")
        return cached(out, lambda tmp: tools.quantize(found, param, param.with_suffix(".bin"), tmp, calibration,
                                                      model.spec.inputs, self.threads), extra_files=(".bin",))

    def _net(self, param: Path, fp16: bool, int8: bool) -> Any:
        import ncnn

        net = ncnn.Net()
        opt = net.opt
        opt.num_threads = self.threads
        opt.use_fp16_storage = opt.use_fp16_packed = opt.use_fp16_arithmetic = fp16
        opt.use_bf16_storage = False
        opt.use_int8_inference = int8
        net.opt = opt
        layers = tools.parse_param(param)
        unknown = tools.unregistered_layers(layers)
        with _stderr_captured() as said:
            ret_param = net.load_param(str(param))
            ret_model = net.load_model(str(param.with_suffix(".bin"))) if ret_param == 0 else None
        engine = said[0].strip() if said else ""
        if unknown or ret_param != 0 or ret_model != 0:
            parts = [f"ncnn could not load {param.name}: load_param returned {ret_param}"
                     + (f", load_model returned {ret_model}" if ret_model is not None else "")]
            if engine:
                parts.append(f"ncnn said: {engine[-800:]!r}")
            if unknown:
                parts.append("pnnx left ops ncnn does not implement: "
                             + ", ".join(sorted({f"{la.type} ({la.name})" for la in unknown})))
            raise ConversionError("; ".join(parts))
        return net


def _check_blobs(net: Any, model: ExportedModel) -> None:
    """pnnx names blobs in0.. / out0.. in forward order; the model's declared inputs and outputs must all exist."""
    want_in = [f"in{i}" for i in range(len(model.spec.inputs))]
    want_out = [f"out{i}" for i in range(len(model.output_names))]
    have_in, have_out = list(net.input_names()), list(net.output_names())
    if sorted(have_in) != sorted(want_in) or any(o not in have_out for o in want_out):
        raise ConversionError(f"ncnn model from pnnx has inputs {have_in} and outputs {have_out}, but "
                              f"{model.spec.name} declares inputs {model.input_names} and outputs {model.output_names}")


def _pnnx_exe() -> Path:
    spec = importlib.util.find_spec("pnnx")
    origin = Path(spec.origin) if spec is not None and spec.origin else Path("pnnx")
    return origin.parent / ("pnnx.exe" if sys.platform == "win32" else "pnnx")


def _trace_inputs(model: ExportedModel) -> tuple[Any, ...]:
    """The export example with a batch of 1 (pnnx/ncnn treat axis 0 as the batch)."""
    import torch

    example = model.example_feeds()
    args = []
    for t in model.spec.inputs:
        arr = np.asarray(example[t.name])
        if arr.ndim and isinstance(t.shape[0], str):
            arr = arr[:1]
        args.append(torch.from_numpy(np.ascontiguousarray(arr)))
    return tuple(args)


def _shape_arg(model: ExportedModel, args: Sequence[Any], sizes: dict[str, int]) -> str:
    parts = []
    for t, a in zip(model.spec.inputs, args, strict=True):
        dims = [1 if i == 0 and isinstance(d, str) else sizes[d] if isinstance(d, str) else d
                for i, d in enumerate(t.shape)]  # a symbolic axis 0 is the batch: pnnx/ncnn drop it
        parts.append("[" + ",".join(map(str, dims)) + "]" + _PNNX_TYPES.get(str(a.dtype).removeprefix("torch."), "f32"))
    return ",".join(parts)


def _pnnx_build(model: ExportedModel, tmp: Path, fp16: bool) -> dict[str, Any]:
    """Trace ``model`` and convert it with pnnx into ``tmp`` (.param) and ``tmp.with_suffix('.bin')``."""
    import torch

    from harness.model.reference import mha_fastpath_disabled

    args = _trace_inputs(model)
    folder, pt = tmp.parent, tmp.parent / "model.pt"
    start = time.perf_counter()
    try:  # the MHA fast path's aten::_transformer_encoder_layer_fwd breaks pnnx
        with torch.no_grad(), warnings.catch_warnings(), mha_fastpath_disabled():
            warnings.simplefilter("ignore")
            torch.jit.trace(model.module(), args, check_trace=False).save(str(pt))
    except Exception as exc:
        raise ExportError(f"torch.jit.trace (for pnnx) failed: {type(exc).__name__}: {exc}") from exc
    trace_s = time.perf_counter() - start
    shape1 = _shape_arg(model, args, model.spec.default_sizes())
    second = {k: v[1] if len(v) > 1 else v[0] for k, v in model.spec.dynamic_sizes.items()}
    shape2 = _shape_arg(model, args, second)
    argv = [str(_pnnx_exe()), pt.name, f"inputshape={shape1}", f"fp16={int(fp16)}", f"ncnnparam={tmp.name}",
            f"ncnnbin={tmp.with_suffix('.bin').name}", "ncnnpy=model_ncnn.py", "pnnxparam=model.pnnx.param",
            "pnnxbin=model.pnnx.bin", "pnnxpy=model_pnnx.py", "pnnxonnx=model.pnnx.onnx"]
    log: dict[str, Any] = {"trace_seconds": round(trace_s, 3), "inputshape": shape1}
    start = time.perf_counter()
    proc = _run_pnnx(argv + ([f"inputshape2={shape2}"] if shape2 != shape1 else []), folder)
    if shape2 != shape1 and (proc.returncode != 0 or not tmp.is_file()):
        log["inputshape2_failed"] = _tail(proc)  # retry with static shapes and say so
        proc = _run_pnnx(argv, folder)
    elif shape2 != shape1:
        log["inputshape2"] = shape2
    if proc.returncode != 0 or not tmp.is_file() or not tmp.with_suffix(".bin").is_file():
        raise ConversionError(f"pnnx failed (exit {proc.returncode}) converting {model.spec.name}: {_tail(proc)}")
    log["pnnx_seconds"] = round(time.perf_counter() - start, 3)
    log["convert_seconds"] = round(trace_s + log["pnnx_seconds"], 3)
    log["pnnx_fp16_weights"] = fp16
    ignored = sorted({ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("ignore ")})
    if ignored:
        log["pnnx_ignored"] = ignored[:50]
    return log


def _run_pnnx(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=PNNX_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise ConversionError(f"pnnx did not finish in {PNNX_TIMEOUT_S} s") from exc


def _tail(proc: subprocess.CompletedProcess[str]) -> str:
    text = (proc.stdout + proc.stderr).strip()
    return text[-1500:] or "(no output)"


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """Collect what native code writes to file descriptor 2 (ncnn logs load errors there)."""
    box: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield box
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            box.append(tmp.read().decode(errors="replace"))


def _options(opt: Any) -> dict[str, Any]:
    keys = ("num_threads", "use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage",
            "use_int8_inference", "use_packing_layout", "use_winograd_convolution", "use_sgemm_convolution")
    return {k: getattr(opt, k) for k in keys}


def cpu_features() -> dict[str, bool]:
    """What ncnn reports about this CPU (f16c from /proc/cpuinfo: ncnn's Python module has no query for it)."""
    import ncnn

    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                break
    return {"x86_avx": bool(ncnn.cpu_support_x86_avx()), "x86_avx2": bool(ncnn.cpu_support_x86_avx2()),
            "x86_f16c": "f16c" in flags, "arm_asimdhp": bool(ncnn.cpu_support_arm_asimdhp())}


def _executed(precision: Precision, param: Path, net: Any, settings: dict[str, Any]) -> str:
    """Precision read back from the built net, the .bin weight tags and the CPU."""
    layers = tools.parse_param(param)
    if precision is Precision.INT8:
        return summarize(tools.int8_layer_counts(layers) or Counter({"fp32": 1}))
    compute = [la for la in net.layers() if la.type in tools.COMPUTE_LAYERS]
    opt, cpu = settings["options"], settings["cpu"]
    counts: Counter[str] = Counter()
    for la in compute:  # fp16 arithmetic only where ncnn has it (ARM asimdhp) and the layer supports fp16
        fp16 = opt["use_fp16_arithmetic"] and cpu["arm_asimdhp"] and la.support_fp16_storage
        counts["fp16" if fp16 else "fp32"] += 1
    counts = counts or Counter({"fp32": 1})
    fp16_storage = settings["bin_weight_blobs"]["fp16"] > 0 or (opt["use_fp16_storage"] and cpu["x86_f16c"])
    settings["fp16_arithmetic_layers"] = counts.get("fp16", 0)
    return summarize(counts, storage="fp16" if fp16_storage and counts.get("fp32") else None)


def _output_ranks(model: ExportedModel) -> list[int]:
    """Ranks of the torch outputs at batch 1 (ncnn outputs lack the batch axis)."""
    from harness.model.reference import run_torch

    feeds = {t.name: a.numpy() for t, a in zip(model.spec.inputs, _trace_inputs(model), strict=True)}
    outs = run_torch(model.module(), feeds, model.input_names, model.output_names)
    return [outs[n].ndim for n in model.output_names]
