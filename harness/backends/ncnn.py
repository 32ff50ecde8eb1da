"""ncnn via pnnx: torch module -> TorchScript trace -> pnnx -> ncnn .param/.bin, run with ncnn's Python API.

fp32 converts with fp32 weights and every fp16/bf16 option off. fp16 stores the
weights as fp16 in the .bin (pnnx ``fp16=1``) and turns on ncnn's fp16 storage,
packed and arithmetic options; the executed precision comes from the CPU
features ncnn reports, the weight tags in the .bin and the layers ncnn built
(x86 has no fp16 arithmetic in ncnn: ``mixed(fp16-storage,fp32-compute)``).
int8 quantizes the fp32 conversion with ncnn2table + ncnn2int8 where they are
installed, else with the harness's Python port of them (``_ncnn_quant``), and
counts the compute layers of the loaded net that carry int8 weights and scales
(the rest, and why, go to ``settings["int8_fp32_layers"]``).

ncnn Mats have no batch axis: pnnx drops axis 0, so a batch > 1 runs one element
at a time and the outputs are stacked. Integer token ids are bit-cast
int32 -> float32 (ncnn Embed). ``ncnn.Mat(ndarray)`` wraps memory without
owning it, so inputs stay referenced until extraction ends and outputs are
copied before the extractor goes away.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from harness.backends import _ncnn_quant_build as int8
from harness.backends import _ncnn_tools as tools
from harness.backends import _pnnx as pnnx
from harness.backends.base import Backend, BoundCall, Session, missing_package_reason
from harness.core.cache import cached, feeds_digest
from harness.core.errors import ConversionError, UnsupportedPrecision
from harness.core.machine import module_version
from harness.core.precision import summarize
from harness.core.types import Cause, Feeds, Precision, TensorSpec

if TYPE_CHECKING:
    from harness.model.export import ExportedModel

BATCH_NOTE = "ncnn Mat has no batch axis: batch > 1 runs one element at a time, outputs stacked"


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
        # asarray keeps a 0-d input 0-d; a 0-d input has no batch axis and goes whole to every item
        arrays = [np.asarray(feeds[t.name]) for t in self.inputs]
        n = max((a.shape[0] for a in arrays if a.ndim), default=1)
        if any(a.ndim and a.shape[0] not in (1, n) for a in arrays):
            shapes = {t.name: a.shape for t, a in zip(self.inputs, arrays, strict=True)}
            raise ValueError(f"ncnn: inputs need a common batch axis 0 (size 1 or {n}); got {shapes}")
        per_item = [self._run_one([a[i if a.shape[0] > 1 else 0] if a.ndim else a for a in arrays])
                    for i in range(n)]
        out: dict[str, np.ndarray] = {}
        for k, (name, rank) in enumerate(zip(self.output_names, self.out_ranks, strict=True)):
            if rank == 0:  # a 0-d output comes back as a 1-element Mat and has no batch axis to stack on
                if n != 1:
                    raise ValueError(f"ncnn: output {name!r} is 0-d: it cannot be assembled from {n} "
                                     "per-item runs (ncnn Mat has no batch axis)")
                out[name] = per_item[0][k].reshape(())
            else:
                out[name] = np.concatenate([outs[k] for outs in per_item], axis=0)
        return out

    def _run_one(self, items: list[np.ndarray]) -> list[np.ndarray]:
        import ncnn

        keep = [tools.as_mat_array(x, t) for x, t in zip(items, self.inputs, strict=True)]  # Mats borrow these
        mats = [ncnn.Mat(a).clone() for a in keep]  # a first layer working in place on a borrowed Mat crashes
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
    sdk_modules: ClassVar[tuple[str, ...]] = ("ncnn",)
    needs_onnx: ClassVar[bool] = False

    def unavailable_reason(self) -> str | None:
        reason = missing_package_reason("ncnn", "ncnn", "pnnx", "torch")
        if reason is None and not pnnx.pnnx_exe().is_file():
            return (f"ncnn: the pnnx package has no converter executable at {pnnx.pnnx_exe()} "
                    "(pip install --force-reinstall pnnx)")
        return reason

    def version(self) -> str:
        return module_version("ncnn")

    def unsupported_reason(self, model: ExportedModel, precision: Precision) -> str | None:
        reason = super().unsupported_reason(model, precision)
        if reason is None and precision is Precision.INT8:
            try:
                int8.int8_quantizer()
            except UnsupportedPrecision as exc:
                return str(exc)
        return reason

    def precision_support(self) -> dict[Precision, str | None]:
        support = super().precision_support()
        if support.get(Precision.INT8, "") is None:
            try:
                int8.int8_quantizer()
            except UnsupportedPrecision as exc:
                support[Precision.INT8] = str(exc)
        return support

    def load(self, model: ExportedModel, precision: Precision, workdir: Path,
             calibration: Sequence[Feeds] | None = None) -> Session:
        ranks = _output_ranks(model)
        scalars = [n for n, r in zip(model.output_names, ranks, strict=True) if r == 0]
        if scalars and max(batches := _batch_sizes(model)) > 1:
            raise ConversionError(f"ncnn: 0-d output(s) {scalars} with batches of {sorted(batches)} are not supported "
                                  "by the harness: an ncnn Mat has no batch axis, so a batch runs one item at a time "
                                  "and a 0-d output cannot be assembled from the items", cause=Cause.HARNESS)
        param, log = self.convert(model, fp16=precision is Precision.FP16)  # int8 starts from the fp32 weights
        via = "pnnx ONNX import -> ncnn" if model.spec.onnx_file is not None else "torch.jit.trace -> pnnx -> ncnn"
        settings: dict[str, Any] = {"threads": self.threads, "converter": via,
                                    "pnnx_version": module_version("pnnx"), **log, "batch": BATCH_NOTE}
        if any(t.is_integer for t in model.spec.inputs):
            settings["integer_inputs"] = "bit-cast int32 -> float32 for ncnn Embed"
        if precision is Precision.INT8:
            if not calibration:
                raise ConversionError("ncnn int8: static quantization needs calibration data and none was given")
            param, report = self._int8(model, param, calibration)
            settings.update(report)
        net = self._net(param, fp16=precision is Precision.FP16, int8=precision is Precision.INT8)
        _check_blobs(net, model)
        settings["options"] = _options(net.opt)
        settings["cpu"] = cpu_features()
        settings["bin_weight_blobs"] = tools.weight_tags(param.with_suffix(".bin"))
        executed = _executed(precision, param, net, settings)
        return NcnnSession(net, model.spec.inputs, model.output_names, ranks, param, settings, executed)

    def convert(self, model: ExportedModel, fp16: bool) -> tuple[Path, dict[str, Any]]:
        """The pnnx conversion of ``model`` (cached): the .param path and how it was made."""
        # c2: the conversion recipe's version
        path = model.artifact(f"ncnn-{'fp16' if fp16 else 'fp32'}-pnnx{module_version('pnnx')}-c2.ncnn.param")
        meta = path.with_name(path.name.replace(".ncnn.param", ".json"))
        log: dict[str, Any] = {}
        build = pnnx.build_from_onnx if model.spec.onnx_file is not None else pnnx.build_from_torch
        cached(path, lambda tmp: log.update(build(model, tmp, fp16)), extra_files=(".bin",))
        if log:
            meta.write_text(json.dumps(log))
            log["cached"] = False
        else:  # the artifact is hash-checked; unreadable metadata only loses the conversion log
            try:
                log = {**json.loads(meta.read_text()), "cached": True}
            except (OSError, ValueError, TypeError):
                log = {"cached": True, "conversion_log": "unreadable; the cached artifact passed its hash check"}
        return path, log

    def _int8(self, model: ExportedModel, param: Path, calibration: Sequence[Feeds]) -> tuple[Path, dict[str, Any]]:
        """The int8 model (cached on param, bin, calibration and quantizer) and its report for the settings."""
        quantizer = int8.int8_quantizer()
        digest = hashlib.sha256(param.read_bytes())
        digest.update(param.with_suffix(".bin").read_bytes())
        digest.update(quantizer.identity().encode())  # another build of the tools or the port: another artifact
        key = feeds_digest(calibration, salt=digest.hexdigest(), length=12)
        out = model.artifact(f"ncnn-int8-{key}.ncnn.param")
        built: list[bool] = []

        def build(tmp: Path) -> None:
            int8.build(quantizer, param, tmp, calibration, model.spec.inputs, self.threads,
                        lambda: self._net(param, fp16=False, int8=False))
            built.append(True)

        cached(out, build, extra_files=(".bin", ".table", ".json"))
        return out, {**json.loads(out.with_suffix(".json").read_text()), "int8_cached": not built}

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
    if precision is Precision.INT8:
        loaded = [(la.name, la.type) for la in net.layers()]
        by_type, fp32 = int8.int8_audit(tools.parse_param(param), loaded, settings["options"]["use_int8_inference"],
                                         settings["bin_weight_blobs"]["int8"], settings.get("int8_quantizer", ""),
                                         settings.pop("int8_kept_fp32", {}))
        settings.update(int8_layers=by_type.get("int8", 0), int8_fp32_layers=fp32)
        return summarize(by_type or Counter({"fp32": 1}))
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


def _batch_sizes(model: ExportedModel) -> set[int]:
    """Every size axis 0 of an input takes (``NcnnSession.run`` runs that many items one at a time)."""
    sizes = {1}
    for t in model.spec.inputs:
        if t.shape and isinstance(t.shape[0], str):
            sizes.update(model.spec.dynamic_sizes.get(t.shape[0], ()))
        elif t.shape:
            sizes.add(int(t.shape[0]))
    return sizes


def _output_ranks(model: ExportedModel) -> list[int]:
    """Ranks of the torch outputs at batch 1 (ncnn outputs lack the batch axis)."""
    from harness.model.reference import run_torch

    if model.spec.onnx_file is not None:  # no torch module: the ONNX graph's declared output ranks
        import onnx

        graph = onnx.load(str(model.onnx_path), load_external_data=False).graph
        ranks = {o.name: len(o.type.tensor_type.shape.dim) for o in graph.output}
        return [ranks.get(n, 1) for n in model.output_names]
    feeds = {t.name: a.numpy() for t, a in zip(model.spec.inputs, pnnx.trace_inputs(model), strict=True)}
    outs = run_torch(model.module(), feeds, model.input_names, model.output_names)
    return [outs[n].ndim for n in model.output_names]
