"""ONNX backend-test case files: discovery, data sets and expected outputs of ONNX's own test cases."""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.cache import cache_root, cached
from harness.core.compare import Tolerance
from harness.core.errors import HarnessError, UnknownNameError
from harness.core.spec import ModelSpec
from harness.core.types import Cause, Precision, Status, TensorSpec

SUITE = "onnx_conformance"
"""The suite name of ONNX conformance records."""
CASE_SETS = ("node", "pytorch-converted", "pytorch-operator", "simple", "light")
DEFAULT_RTOL, DEFAULT_ATOL = 1e-3, 1e-7
"""ONNX's own defaults (``onnx.backend.test.loader``, ``case.node.expect``)."""

TOLERANCE_OVERRIDES: dict[str, tuple[float, float]] = {
    # case-id pattern -> (rtol, atol), where ONNX's own tolerance (rtol 1e-3, atol 1e-7 for every node case in onnx
    # 1.23; data.json for model cases) asks what no float32 engine can give. DFT/STFT outputs whose exact value is 0
    # come out of cancelling sums of float32 terms up to |540|..|1912|; the rounding left there (~2.5e-7 of the
    # largest magnitude) is above 1e-7. Measured (onnx 1.23.2, worst input element, atol needed at rtol 1e-3):
    # ORT 1.32 dft 1.6e-4, dft_axis 2.37e-4, inverse 1.7e-5, irfft 1.1e-5, stft 8.4e-5, stft_with_window 4.2e-5;
    # OpenVINO 2026.4 at most 8.8e-5. Overrides: the worst need x ~1.25. ONNX's runner fails these cases on ORT:
    # listed as policy differences in tests/data/onnx_crosscheck_policy.json.
    "node-test_dft*": (1e-3, 3e-4),
    "node-test_stft*": (1e-3, 1e-4),
}

NO_TORCH_REASON = "ONNX-native model: no torch module"
FORMAT = "v4"
"""Version of the cached case files and indexes (v4: sequence/optional values, data.json, ml_dtypes runnable)."""

_CI_NODE = """abs add add_bcast sub mul div pow sqrt exp log relu leakyrelu prelu_example hardswish sigmoid tanh
gelu_default_1 softmax_axis_1 conv_with_strides_padding convtranspose maxpool_2d_pads averagepool_2d_pads
globalaveragepool batchnorm_example instancenorm_example layer_normalization_2d_axis0 rms_normalization_2d_axis0
gemm_default_no_bias matmul_2d einsum_batch_matmul attention_3d lstm_defaults gru_defaults
reshape_reordered_all_dims transpose_default flatten_axis0 squeeze unsqueeze_axis_0 expand_dim_changed
concat_2d_axis_1 slice gather_0 scatter_elements_with_axis where_example cumsum_1d top_k argmax_default_axis_example
nonzero_example range_float_type_positive_delta constantofshape_int_zeros resize_upsample_scales_nearest
resize_downsample_scales_linear depthtospace_crd_mode_example reduce_mean_default_axes_keepdims_example
clip_default_inbounds cast_FLOAT_to_FLOAT16 mod_mixed_sign_float32 bitshift_right_uint32 quantizelinear
dequantizelinear dft cast_FLOAT_to_BFLOAT16 sequence_insert_at_back optional_has_element_empty_optional_input"""
CI_CASES = (*(f"node-test_{n}" for n in _CI_NODE.split()), "pytorch-converted-test_Conv2d",
            "pytorch-operator-test_operator_add_broadcast", "simple-test_single_relu_model", "light-test_squeezenet")
"""The ``ci`` selection: common ops, a few engine-hard ones, sequence/optional values and a bf16 output."""


class NoTorchModule(HarnessError):
    """An ONNX-native model asked for its torch module (by a path that needs one: the model's nature)."""

    status = Status.UNSUPPORTED
    cause = Cause.MODEL


@dataclass(frozen=True)
class OnnxCase:
    """One conformance case: an ONNX file, its expected data sets and what the harness knows about it."""

    case_set: str
    name: str
    model_file: str
    data_dir: str
    op_types: tuple[str, ...]
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    digest: str
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    unsupported: str | None = None
    kinds: tuple[tuple[str, str], ...] = ()
    """``(name, kind)`` of every graph input/output that is not a plain tensor: ``sequence`` or ``optional``."""

    @property
    def id(self) -> str:
        """``<case_set>-<name>``, e.g. ``node-test_abs``."""
        return f"{self.case_set}-{self.name}"

    @property
    def tolerance(self) -> Tolerance:
        """The case's element-wise tolerance; cosine disabled and no element may be out."""
        rtol, atol = next((v for p, v in TOLERANCE_OVERRIDES.items() if fnmatch.fnmatchcase(self.id, p)),
                          (self.rtol, self.atol))
        return Tolerance(atol=atol, rtol=rtol, min_cosine=-1.0, max_mismatch_fraction=0.0)

    def data_sets(self) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """``[(inputs, expected_outputs), ...]`` by name, from the case's ``test_data_set_*`` folders."""
        if self.case_set == "light":
            return light_golden(Path(self.model_file), self.inputs, self.outputs)
        return load_data_sets(Path(self.data_dir), [t.name for t in self.inputs], list(self.outputs), dict(self.kinds))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OnnxCase:
        return cls(**{**d, "op_types": tuple(d["op_types"]), "outputs": tuple(d["outputs"]),
                      "kinds": tuple(tuple(k) for k in d.get("kinds", ())),
                      "inputs": tuple(TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in d["inputs"])})

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["inputs"] = [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in self.inputs]
        return d


def onnx_data_dir() -> Path:
    """``onnx/backend/test/data`` of the installed onnx wheel."""
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data"


def _cases_root(root: Path | None) -> Path:
    import onnx

    return (root or cache_root()) / "onnx-cases" / f"onnx-{onnx.__version__}"


def discover(sets: Iterable[str] = CASE_SETS, root: Path | None = None) -> list[OnnxCase]:
    """Every case of ``sets``, indexed once per onnx version in the cache (node cases generated there first)."""
    unknown = set(sets) - set(CASE_SETS)
    if unknown:
        raise HarnessError(f"unknown ONNX case sets {sorted(unknown)}; known: {', '.join(CASE_SETS)}")
    out: list[OnnxCase] = []
    for case_set in sets:
        index = _cases_root(root) / f"index-{case_set}-{FORMAT}.json"
        cached(index, lambda tmp, s=case_set: tmp.write_text(json.dumps([c.as_dict() for c in _scan(s, root)])))
        out += [OnnxCase.from_dict(d) for d in json.loads(index.read_text())]
    return out


def select(cases: Sequence[OnnxCase], mode: str = "all", patterns: Sequence[str] = ()) -> list[OnnxCase]:
    """``mode`` ``ci`` (the curated ``CI_CASES``) or ``all``, then shell patterns over case ids."""
    if mode not in ("ci", "all"):
        raise HarnessError(f"--onnx-cases {mode!r}: expected 'ci' or 'all'")
    chosen = [c for c in cases if c.id in CI_CASES] if mode == "ci" else list(cases)
    if patterns:
        chosen = [c for c in chosen if any(fnmatch.fnmatchcase(c.id, p) for p in patterns)]
    return chosen


def _scan(case_set: str, root: Path | None) -> list[OnnxCase]:
    if case_set == "light":
        return _scan_light()
    base = node_cases_dir(root) if case_set == "node" else onnx_data_dir() / case_set
    return [_with_data_json(describe(case_set, d.name, d / "model.onnx", d), d / "data.json")
            for d in sorted(base.iterdir()) if (d / "model.onnx").is_file()]


def _with_data_json(case: OnnxCase, data_json: Path) -> OnnxCase:
    """The case with ONNX's own tolerance from ``data.json`` where there is one (as ONNX's loader reads it)."""
    if not data_json.is_file():
        return case
    info = json.loads(data_json.read_text())
    return replace(case, rtol=info.get("rtol", DEFAULT_RTOL), atol=info.get("atol", DEFAULT_ATOL))


def node_cases_dir(root: Path | None = None) -> Path:
    """The node cases written as files (model.onnx + test_data_set_0/*.pb), generated on first use (~20 s)."""
    dest = _cases_root(root) / f"node-{FORMAT}"
    if (dest / ".complete").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".node-"))
    try:
        _write_node_cases(tmp)
        (tmp / ".complete").write_text(str(time.time()))
        try:
            tmp.rename(dest)
        except OSError:  # another process finished first
            if not (dest / ".complete").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _write_node_cases(out: Path) -> None:
    import warnings

    from onnx.backend.test.loader import load_node_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generators overflow/divide by zero on purpose
        cases = load_node_model_tests()
    for case in cases:
        d = out / case.name
        d.mkdir()
        (d / "model.onnx").write_bytes(case.model.SerializeToString())
        (d / "data.json").write_text(json.dumps({"rtol": case.rtol, "atol": case.atol}))  # ONNX's per-case tolerance
        g = case.model.graph
        for i, (ins, outs) in enumerate(case.data_sets):
            ds = d / f"test_data_set_{i}"
            ds.mkdir()
            for prefix, infos, values in (("input", g.input, ins), ("output", g.output, outs)):
                for j, value in enumerate(values):
                    (ds / f"{prefix}_{j}.pb").write_bytes(_to_proto(value, infos[j]).SerializeToString())


def _to_proto(value: Any, info: Any) -> Any:
    """The proto ONNX's own ``backend-test-tools generate-data`` writes for ``value`` of graph value ``info``."""
    from onnx import TensorProto, numpy_helper

    kind = info.type.WhichOneof("value")
    if kind == "sequence_type":
        return numpy_helper.from_list(value, info.name)
    if kind == "optional_type":
        return numpy_helper.from_optional(value, info.name)
    if kind == "map_type":
        return numpy_helper.from_dict(value, info.name)
    return value if isinstance(value, TensorProto) else numpy_helper.from_array(np.asarray(value), info.name)


def _scan_light() -> list[OnnxCase]:
    """The light models, with ONNX's tolerance from ``real/test_<name>/data.json`` (the runner's "real" cases)."""
    data = onnx_data_dir()
    names = [(f, f"test_{f.stem.removeprefix('light_')}") for f in sorted((data / "light").glob("light_*.onnx"))]
    return [_with_data_json(describe("light", n, f, f.parent), data / "real" / n / "data.json") for f, n in names]


def describe(case_set: str, name: str, model_file: Path, data_dir: Path) -> OnnxCase:
    """An OnnxCase for ``model_file`` whose ``test_data_set_*`` folders are in ``data_dir``."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    g = model.graph
    inits = {i.name for i in g.initializer}
    ops = sorted({n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in g.node})
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    problems = [p for v in [*g.input, *g.output] if v.name not in inits and (p := _value_problem(v.name, v.type))]
    specs = tuple(_tensor_spec(v) for v in g.input if v.name not in inits)
    kinds = tuple((v.name, k.removesuffix("_type")) for v in [*g.input, *g.output]
                  if v.name not in inits and (k := v.type.WhichOneof("value")) in ("sequence_type", "optional_type"))
    return OnnxCase(case_set, name, str(model_file), str(data_dir), tuple(ops), opset, specs,
                    tuple(o.name for o in g.output), hashlib.sha256(model_file.read_bytes()).hexdigest()[:12],
                    unsupported="; ".join(problems) or None, kinds=kinds)


def _value_problem(name: str, type_proto: Any) -> str | None:
    """Why the harness cannot feed or read this graph input/output through the engines' Python APIs, or None.

    Sequences and optionals are carried (lists of arrays, ``None``/value: ONNX Runtime's Python API
    takes and returns them), and so are ml_dtypes tensors (bfloat16, float8, int4...: ONNX Runtime
    through OrtValues); an engine whose API cannot take them says so when it builds the model.
    """
    from onnx import helper

    kind = type_proto.WhichOneof("value")
    if kind in ("sequence_type", "optional_type"):
        inner = getattr(type_proto, kind).elem_type
        return _value_problem(name, inner) if inner.WhichOneof("value") else None
    if kind != "tensor_type":
        return (f"{name!r} is {(kind or 'untyped').removesuffix('_type')}-typed: the harness feeds and reads tensors, "
                "sequences and optionals only (the case is not run; the limit is the harness's, not the engine's)")
    elem = type_proto.tensor_type.elem_type
    try:
        helper.tensor_dtype_to_np_dtype(elem)
    except Exception:  # UNDEFINED and element types newer than this onnx
        return f"{name!r} has element type {elem}, which this onnx version maps to no numpy dtype"
    return None


def _np_dtype(elem: int) -> np.dtype:
    from onnx import helper

    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem))
    except Exception:  # UNDEFINED and future types
        return np.dtype("V1")


def _tensor_spec(v: Any) -> TensorSpec:
    """The TensorSpec of a graph input; a sequence/optional gets its element tensor's dtype and no shape."""
    t = v.type
    while t.WhichOneof("value") in ("sequence_type", "optional_type"):
        t = getattr(t, t.WhichOneof("value")).elem_type
    if t.WhichOneof("value") != "tensor_type":
        return TensorSpec(v.name, (), "void8")
    if v.type.WhichOneof("value") != "tensor_type":
        return TensorSpec(v.name, (), _spec_dtype(t.tensor_type.elem_type))
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or f"{v.name}_d{i}")
                 for i, d in enumerate(t.tensor_type.shape.dim))
    return TensorSpec(v.name, dims, _spec_dtype(t.tensor_type.elem_type))


def _spec_dtype(elem: int) -> str:
    dtype = _np_dtype(elem)
    return "str" if dtype.kind in "OSU" else dtype.name


def read_value(path: Path, kind: str = "tensor") -> Any:
    """One ``input_N.pb``/``output_N.pb``: an array, a list of arrays (``sequence``) or None/value (``optional``)."""
    import onnx
    from onnx import numpy_helper

    if kind == "tensor":
        return numpy_helper.to_array(onnx.load_tensor(str(path)))
    proto = onnx.SequenceProto() if kind == "sequence" else onnx.OptionalProto()
    proto.ParseFromString(path.read_bytes())
    return numpy_helper.to_list(proto) if kind == "sequence" else numpy_helper.to_optional(proto)


def load_data_sets(folder: Path, inputs: Sequence[str], outputs: Sequence[str], kinds: dict[str, str] | None = None,
                   ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Read ``test_data_set_*/{input,output}_N.pb`` as named values, positionally.

    Values are what ONNX Runtime's Python API takes and returns: arrays for tensors, lists of
    arrays for the names ``kinds`` marks ``sequence``, None or the value for ``optional``. So a
    case's feeds and expected outputs (``harness.core.types.Feeds``) may hold lists and None.
    """
    kinds = kinds or {}

    def read(ds: Path, prefix: str, names: Sequence[str]) -> dict[str, Any]:
        files = [(n, ds / f"{prefix}_{j}.pb") for j, n in enumerate(names)]
        return {n: read_value(f, kinds.get(n, "tensor")) for n, f in files if f.exists()}

    folders = sorted((p for p in folder.iterdir() if p.name.startswith("test_data_set_")),  # glob costs 0.4 ms
                     key=lambda p: int(p.name.rsplit("_", 1)[1]))
    return [(read(ds, "input", inputs), read(ds, "output", outputs)) for ds in folders]


def light_golden(model_file: Path, inputs: Sequence[TensorSpec], outputs: Sequence[str],
                 ) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """The light model's one data set: ONNX's dummy input (``arange(n) / n``) and ``light_X_output_N.pb``."""
    feeds = {}
    for t in inputs:
        shape = tuple(d if isinstance(d, int) else 1 for d in t.shape)
        n = int(np.prod(shape))
        feeds[t.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
    expected = {name: read_value(model_file.with_name(f"{model_file.stem}_output_{i}.pb"))
                for i, name in enumerate(outputs)}
    return [(feeds, expected)]


_RANDOM_MASK = ("training-mode Dropout with ratio > 0: the expected values come from numpy's random mask; an engine "
                "draws its own, so the comparison can neither pass nor fail meaningfully")
NOT_COMPARABLE: dict[str, str] = {f"node-test_training_dropout{s}": _RANDOM_MASK
                                  for s in ("", "_mask", "_default", "_default_mask")}
"""Case-id patterns whose expected outputs no engine can reproduce: status ``skipped`` with the reason."""


def _no_module() -> Any:
    raise NoTorchModule(f"{NO_TORCH_REASON}: the model exists only as an ONNX file")


@functools.cache
def _cases_by_id(case_set: str) -> dict[str, OnnxCase]:
    return {c.id: c for c in discover([case_set])}


def find_case(case_id: str) -> OnnxCase:
    """The case named ``case_id`` (e.g. ``node-test_abs``); an unknown id raises listing close ones."""
    case_set = next((s for s in sorted(CASE_SETS, key=len, reverse=True) if case_id.startswith(f"{s}-")), None)
    if case_set is None:
        raise UnknownNameError(f"unknown ONNX case {case_id!r}: ids start with one of {', '.join(CASE_SETS)} "
                               "followed by '-', e.g. node-test_abs")
    cases = _cases_by_id(case_set)
    if case_id not in cases:
        import difflib

        close = difflib.get_close_matches(case_id, cases, n=5)
        raise UnknownNameError(f"unknown ONNX case {case_id!r}" + (f"; did you mean {', '.join(close)}?" if close
                                                                    else f" ({len(cases)} cases in {case_set})"))
    return cases[case_id]


def case_spec(case: OnnxCase, name: str | None = None) -> ModelSpec:
    """An ONNX-native ModelSpec for ``case``: its file is the model, its data sets are the reference."""
    golden = functools.cache(case.data_sets)
    first = golden()[0][0] if golden() else {}
    inputs = tuple(replace(t, shape=tuple(first[t.name].shape)) if isinstance(first.get(t.name), np.ndarray) else t
                   for t in case.inputs)
    not_comparable = next((r for p, r in NOT_COMPARABLE.items() if fnmatch.fnmatchcase(case.id, p)), None)
    return ModelSpec(name=name or case.id, factory=_no_module, inputs=inputs, outputs=case.outputs,
                     tags=frozenset({"onnx-case", case.case_set}), tolerances={Precision.FP32: case.tolerance},
                     example=lambda: dict(golden()[0][0]) if golden() else {}, golden=golden, opset=case.opset,
                     exporter="onnx-native", source=case.model_file, description=f"ONNX conformance case {case.id}",
                     onnx_file=Path(case.model_file), not_runnable=case.unsupported, not_comparable=not_comparable,
                     record_extra={"op_types": list(case.op_types), "opset": case.opset, "case_set": case.case_set})
