"""ONNX conformance cases: discovery, one case through ORT, verdicts that can fail, light zoo models, the worker."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason="ONNX cases: Python package 'onnx' not installed (extra 'ort')")
pytest.importorskip("onnxruntime", reason="ONNX cases: Python package 'onnxruntime' not installed (extra 'ort')")

import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from harness.core.options import CaseRequest
from harness.core.types import Precision, Status
from harness.model.onnx_files import CI_CASES, SUITE, OnnxCase, case_spec, describe, discover, select
from harness.run.case import run_case
from model_zoo.registry import add_model


def run_onnx_case(case: OnnxCase, backend: str, **options) -> object:
    """Register ``case`` as the model ``onnx:<id>`` and run it through the one case loop."""
    name = f"onnx:{case.id}"
    add_model(case_spec(case, name=name))
    return run_case(CaseRequest(name, backend, Precision.FP32, suite=SUITE, test_id=f"{case.id}-{backend}", **options))


@pytest.fixture(scope="module")
def cases() -> dict[str, OnnxCase]:
    return {c.id: c for c in discover()}


def test_discovery_covers_every_set_and_every_ci_id_exists(cases):
    per_set = {s: sum(c.case_set == s for c in cases.values()) for s in
               ("node", "pytorch-converted", "pytorch-operator", "simple", "light")}
    assert per_set["node"] > 1000, per_set
    assert per_set["pytorch-converted"] > 50, per_set
    assert per_set["simple"] > 10, per_set
    assert per_set["light"] == 9, per_set
    ci = select(list(cases.values()), "ci")
    assert sorted(c.id for c in ci) == sorted(CI_CASES), set(CI_CASES) - {c.id for c in ci}
    assert [c.id for c in select(list(cases.values()), "all", ["node-test_abs"])] == ["node-test_abs"]
    with pytest.raises(Exception, match="expected 'ci' or 'all'"):
        select([], "some")


def test_node_case_passes_on_ort_and_the_record_says_where(cases):
    record = run_onnx_case(cases["node-test_abs"], "ort", run_id="t")
    assert record.status == "pass", record.reason
    assert (record.suite, record.precision, record.test_id) == (SUITE, "fp32", "node-test_abs-ort")
    assert record.extra["op_types"] == ["Abs"]
    assert record.extra["case_set"] == "node"
    assert record.extra["opset"] >= 13
    assert record.metrics["max_abs"] == 0.0
    assert record.input_sets == ["golden-0"]
    assert record.model == "onnx:node-test_abs"


def _copy_case(case: OnnxCase, tmp_path: Path) -> OnnxCase:
    folder = tmp_path / case.name
    shutil.copytree(case.data_dir, folder)
    return replace(describe(case.case_set, case.name, folder / "model.onnx", folder), name=case.name + "_edited")


def test_a_wrong_expected_value_is_a_mismatch(cases, tmp_path):
    case = _copy_case(cases["node-test_abs"], tmp_path)
    out = tmp_path / "test_abs" / "test_data_set_0" / "output_0.pb"
    expected = numpy_helper.to_array(onnx.load_tensor(str(out))).copy()
    expected.flat[0] += 1e-2 * max(1.0, abs(float(expected.flat[0])))
    out.write_bytes(numpy_helper.from_array(expected, "y").SerializeToString())
    record = run_onnx_case(case, "ort")
    assert record.status == "mismatch", record.reason
    assert "outside atol=1e-07 rtol=0.001" in record.reason


def test_infinite_expected_values_must_come_out_infinite(cases):
    """ORT writes -3.4e38 where ONNX's Attention expects -inf (84 masked scores): that is no pass."""
    record = run_onnx_case(cases["node-test_attention_4d_with_past_and_present_qk_matmul_bias_3d_mask_causal"], "ort")
    assert record.status == "mismatch", record.reason
    assert "84 of 84 infinite reference values not matched by the same infinity" in record.reason
    assert "expected -inf, got -3.40282e+38" in record.reason


@pytest.mark.parametrize("case_id", ["node-test_cast_FLOAT_to_DOUBLE", "node-test_mod_float_edge_cases_fmod_0_float32",
                                     "pytorch-operator-test_operator_sqrt"])
def test_nan_where_the_spec_demands_nan_passes(cases, case_id):
    case = cases[case_id]
    expected = case.data_sets()[0][1]
    assert any(np.isnan(v).any() for v in expected.values()), "the case must expect NaN somewhere"
    record = run_onnx_case(case, "ort")
    assert record.status == "pass", record.reason


@pytest.mark.parametrize("case_id", ["node-test_identity_sequence", "node-test_if_opt", "node-test_split_to_sequence_1",
                                     "node-test_sequence_map_add_2_sequences", "node-test_sequence_insert_at_back"])
def test_sequence_and_optional_values_run_on_ort(cases, case_id):
    record = run_onnx_case(cases[case_id], "ort")
    assert record.status == "pass", record.reason
    assert record.outputs, "the values were compared"


def test_a_wrong_sequence_element_is_a_mismatch(cases, tmp_path):
    case = _copy_case(cases["node-test_identity_sequence"], tmp_path)
    out = Path(case.data_dir) / "test_data_set_0" / "output_0.pb"
    seq = onnx.SequenceProto()
    seq.ParseFromString(out.read_bytes())
    values = numpy_helper.to_list(seq)
    values[1] = values[1] + 1
    out.write_bytes(numpy_helper.from_list(values, seq.name).SerializeToString())
    record = run_onnx_case(case, "ort")
    assert record.status == "mismatch", record.reason
    assert record.reason.startswith("y[1]: ")


def test_sequences_on_openvino_end_as_the_engine_or_the_harness_says(cases):
    pytest.importorskip("openvino", reason="ov: Python package 'openvino' not installed")
    built = run_onnx_case(cases["node-test_identity_opt"], "ov")  # OpenVINO builds it; its runtime has no sequences
    assert (built.status, built.cause) == ("unsupported", "engine"), built.reason
    assert "'opt_in' is a sequence" in built.reason
    assert "carries tensors only" in built.reason
    rejected = run_onnx_case(cases["node-test_if_opt"], "ov")  # OpenVINO's converter refuses Optional itself
    assert (rejected.status, rejected.cause) == ("unsupported", "engine"), rejected.reason
    assert "No conversion rule found" in rejected.reason
    dynamic = run_onnx_case(cases["node-test_identity_sequence"], "ov")  # converted; the CPU plugin refuses its port
    assert (dynamic.status, dynamic.cause) == ("unsupported", "engine"), dynamic.reason
    assert "rank().is_dynamic()" in dynamic.reason + dynamic.detail


@pytest.mark.parametrize("case_id", ["node-test_cumsum_1d", "node-test_range_float_type_positive_delta",
                                     "node-test_quantizelinear"])
def test_openvino_gets_scalar_inputs_with_their_rank(cases, case_id):
    """A 0-d input fed as shape [1] made OpenVINO refuse the tensor ('got [1] expecting []'): the harness's error."""
    pytest.importorskip("openvino", reason="ov: Python package 'openvino' not installed")
    case = cases[case_id]
    assert any(np.asarray(v).ndim == 0 for v in case.data_sets()[0][0].values()), "the case must have a 0-d input"
    record = run_onnx_case(case, "ov")
    assert record.status == "pass", record.reason


@pytest.mark.parametrize(("case_id", "input_name"), [("node-test_reduce_sum_default_axes_keepdims_example", "axes"),
                                                     ("node-test_castlike_FLOAT_to_FLOAT16", "like"),
                                                     ("node-test_dropout_default", "x")])
def test_openvino_inputs_without_a_port_of_their_own_are_fed_right(cases, case_id, input_name):
    """OpenVINO drops unused inputs (empty axes, CastLike's like) and names an input-to-output port after the
    output (inference Dropout): the harness used to call that the engine's convert failure."""
    ov = pytest.importorskip("openvino", reason="ov: Python package 'openvino' not installed")
    case = cases[case_id]
    names = {n for port in ov.Core().read_model(case.model_file).inputs for n in port.get_names()}
    assert input_name not in names, f"OpenVINO {ov.__version__} keeps a port named {input_name!r} now"
    record = run_onnx_case(case, "ov")
    assert record.status == "pass", record.reason


@pytest.mark.parametrize("case_id", ["node-test_cast_FLOAT_to_BFLOAT16", "node-test_cast_BFLOAT16_to_FLOAT",
                                     "node-test_cast_FLOAT_to_FLOAT8E4M3FN", "node-test_cast_FLOAT_to_INT4",
                                     "node-test_cast_INT4_to_FLOAT", "node-test_cast_UINT2_to_FLOAT"])
def test_ml_dtypes_tensors_run_on_ort_through_ortvalues(cases, case_id):
    """ORT's numpy path rejects ml_dtypes arrays; the harness feeds/reads them as OrtValues (4/2-bit packed)."""
    case = cases[case_id]
    ins, expected = case.data_sets()[0]
    assert any(v.dtype.isbuiltin != 1 for v in [*ins.values(), *expected.values()]), "an ml_dtypes value is expected"
    record = run_onnx_case(case, "ort")
    assert record.status == "pass", record.reason


def test_a_wrong_bfloat16_expected_value_is_a_mismatch(cases, tmp_path):
    case = _copy_case(cases["node-test_cast_FLOAT_to_BFLOAT16"], tmp_path)
    out = Path(case.data_dir) / "test_data_set_0" / "output_0.pb"
    expected = numpy_helper.to_array(onnx.load_tensor(str(out))).copy()
    expected.flat[0] = expected.flat[0] * 1.5 + 1  # far beyond ONNX's two bfloat16 ULPs
    out.write_bytes(numpy_helper.from_array(expected, "output").SerializeToString())
    record = run_onnx_case(case, "ort")
    assert record.status == "mismatch", record.reason


def test_openvino_takes_and_gives_bfloat16_tensors_as_their_bits(cases):
    """OpenVINO tensors hold bf16; its numpy view is a float16 view of the bits, so the harness copies bits."""
    pytest.importorskip("openvino", reason="ov: Python package 'openvino' not installed")
    out = run_onnx_case(cases["node-test_cast_FLOAT_to_BFLOAT16"], "ov")
    assert out.status == "pass", out.reason
    fed = run_onnx_case(cases["node-test_cast_BFLOAT16_to_FLOAT"], "ov")
    assert Status(fed.status).passing, fed.reason
    assert fed.metrics["max_abs"] == 0.0


@pytest.mark.parametrize("case_id", ["node-test_attention_4d_diff_heads_mask4d_padded_kv",
                                     "node-test_reduce_max_empty_set_bool"])
def test_an_engine_error_at_run_time_is_an_error_not_a_build_failure(cases, case_id):
    record = run_onnx_case(cases[case_id], "ort")
    assert (record.status, record.cause) == ("error", "engine"), record.reason
    assert "engine raised while running input set 'golden-0'" in record.reason
    assert record.backend_version == onnxruntime.__version__  # set before anything could raise
    assert record.settings == {}  # no session settings: the record ended in the raised error


def test_a_missing_locale_is_the_environment_s(cases):
    import locale

    try:
        locale.setlocale(locale.LC_CTYPE, "en_US.UTF-8")
    except locale.Error:
        pass
    else:
        locale.setlocale(locale.LC_CTYPE, "")
        pytest.skip("this machine has the en_US.UTF-8 locale StringNormalizer names: ORT builds the model")
    record = run_onnx_case(cases["node-test_strnormalizer_export_monday_casesensintive_lower"], "ort")
    assert (record.status, record.cause) == ("convert_failed", "environment"), record.reason
    assert "lacks the locale" in record.reason


def test_dft_tolerance_is_onnx_s_unless_measured_otherwise(cases, monkeypatch):
    from harness.model import onnx_files

    assert (cases["node-test_abs"].rtol, cases["node-test_abs"].atol) == (1e-3, 1e-7)  # ONNX's TestCase values
    assert cases["light-test_densenet121"].rtol == 2e-3  # ONNX's data.json
    dft = cases["node-test_dft_axis"]
    assert dft.tolerance.atol == 3e-4
    assert run_onnx_case(dft, "ort").status == "pass"
    monkeypatch.setattr(onnx_files, "TOLERANCE_OVERRIDES", {})
    strict = run_onnx_case(replace(dft, name="test_dft_axis_onnx_tolerance"), "ort")
    assert strict.status == "mismatch", "ONNX's atol 1e-7 cannot hold for a float32 DFT: the override is needed"


def _single_node_case(tmp_path: Path, name: str, node: onnx.NodeProto) -> OnnxCase:
    folder = tmp_path / name
    (folder / "test_data_set_0").mkdir(parents=True)
    graph = helper.make_graph([node], name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    x = np.array([1.0, -2.0], np.float32)
    for kind, value in (("input", x), ("output", x)):
        (folder / "test_data_set_0" / f"{kind}_0.pb").write_bytes(numpy_helper.from_array(value).SerializeToString())
    return describe("node", name, folder / "model.onnx", folder)


def test_engine_rejections_are_classified_with_the_engine_message(tmp_path):
    unknown_op = run_onnx_case(_single_node_case(tmp_path, "test_unknown", helper.make_node("NoSuchOp", ["x"], ["y"])),
                               "ort")
    assert unknown_op.status == "unsupported", unknown_op.reason
    assert "NoSuchOp" in unknown_op.reason
    add = helper.make_node("Add", ["x", "nowhere"], ["y"])
    dangling = run_onnx_case(_single_node_case(tmp_path, "test_dangling", add), "ort")
    assert dangling.status == "convert_failed", dangling.reason
    assert "nowhere" in dangling.reason
    assert dangling.backend_version == onnxruntime.__version__


def test_light_model_runs_through_the_zoo_path_against_its_golden_output():
    from harness.core.options import CaseRequest
    from harness.model.export import ExportedModel
    from harness.run.case import run_case
    from model_zoo import get_model
    from model_zoo.registry import add_model

    spec = get_model("light_squeezenet")
    assert ExportedModel(spec).onnx.exporter == "onnx-native"
    ok = run_case(CaseRequest("light_squeezenet", "ort", Precision.FP32))
    assert ok.status == "pass", ok.reason
    assert ok.input_sets == ["golden-0"]
    assert ok.metrics["max_abs"] < 1e-6
    torch = run_case(CaseRequest("light_squeezenet", "torch", Precision.FP32))
    assert torch.status == "unsupported"
    assert "ONNX-native model: no torch module" in torch.reason

    def shifted() -> list:
        feeds, out = spec.golden()[0]
        return [(feeds, {k: v * 1.01 for k, v in out.items()})]

    add_model(replace(spec, name="light_squeezenet_wrong_golden", golden=shifted))
    bad = run_case(CaseRequest("light_squeezenet_wrong_golden", "ort", Precision.FP32))
    assert bad.status == "mismatch", bad.reason


def test_light_specs_name_the_graph_inputs_and_outputs(cases):
    from model_zoo import get_model
    from model_zoo.onnx_native import IMAGE, LIGHT_MODELS, light_dir

    for name, (inp, out, _) in LIGHT_MODELS.items():
        case = describe("light", name, light_dir() / f"light_{name}.onnx", light_dir())
        assert [(t.name, t.shape) for t in case.inputs] == [(inp, IMAGE)], name
        assert case.outputs == (out,), name
        tol = get_model(f"light_{name}").tolerances[Precision.FP32]
        assert (tol.rtol, tol.atol) == (cases[f"light-test_{name}"].rtol, cases[f"light-test_{name}"].atol), name


def test_supervisor_runs_onnx_cases_in_one_reused_child_and_survives_a_crash():
    """The suite's path: ONNX cases through harness.exec, one child reused; a crash costs one case."""
    from harness.exec.supervisor import run_in_subprocess

    first = run_in_subprocess(CaseRequest("onnx:node-test_abs", "ort", Precision.FP32, suite=SUITE), timeout_s=300)
    second = run_in_subprocess(CaseRequest("onnx:node-test_relu", "ort", Precision.FP32, suite=SUITE), timeout_s=300)
    assert (first.status, second.status) == ("pass", "pass"), (first.reason, second.reason)
    assert second.extra["worker"]["reused"], "the second case must reuse the first case's child"
    assert second.extra["op_types"] == ["Relu"]
