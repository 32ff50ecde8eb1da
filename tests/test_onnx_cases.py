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
from onnx import TensorProto, helper, numpy_helper

from harness.core.options import CaseRequest
from harness.core.types import Precision
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


def test_sequence_and_bfloat16_cases_are_unsupported_with_the_reason(cases):
    seq = run_onnx_case(cases["node-test_sequence_insert_at_back"], "ort")
    assert seq.status == "unsupported"
    assert "sequence-typed" in seq.reason
    bf16 = run_onnx_case(cases["node-test_cast_FLOAT_to_BFLOAT16"], "ort")
    assert bf16.status == "unsupported"
    assert "BFLOAT16" in bf16.reason


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


def test_light_specs_name_the_graph_inputs_and_outputs():
    from model_zoo.onnx_native import IMAGE, LIGHT_MODELS, light_dir

    for name, (inp, out, _) in LIGHT_MODELS.items():
        case = describe("light", name, light_dir() / f"light_{name}.onnx", light_dir())
        assert [(t.name, t.shape) for t in case.inputs] == [(inp, IMAGE)], name
        assert case.outputs == (out,), name


def test_supervisor_runs_onnx_cases_in_one_reused_child_and_survives_a_crash():
    """The suite's path: ONNX cases through harness.exec, one child reused; a crash costs one case."""
    from harness.exec.supervisor import run_in_subprocess

    first = run_in_subprocess(CaseRequest("onnx:node-test_abs", "ort", Precision.FP32, suite=SUITE), timeout_s=300)
    second = run_in_subprocess(CaseRequest("onnx:node-test_relu", "ort", Precision.FP32, suite=SUITE), timeout_s=300)
    assert (first.status, second.status) == ("pass", "pass"), (first.reason, second.reason)
    assert second.extra["worker"]["reused"], "the second case must reuse the first case's child"
    assert second.extra["op_types"] == ["Relu"]
