"""The dynamo exporter in a process that has exported before (a reused child, ``--in-process``)."""

from __future__ import annotations

import importlib.util

import pytest

from harness.model.export import ExportedModel
from model_zoo import get_model

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript")),
    reason="the dynamo exporter needs onnx and onnxscript (pip install -e '.[ort]')")


def _seq_dim(path) -> str:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return next(i for i in graph.input if i.name == "input").type.tensor_type.shape.dim[1].dim_param


def test_a_second_lstm_dynamo_export_in_one_process_keeps_the_sequence_axis(tmp_path):
    """torch.onnx's dynamo exporter swaps aten.lstm's kernel for a while_loop one during capture without
    clearing the op's dispatch cache; its later passes cache the unrolling kernel, so a second LSTM export in
    the same process specialised the sequence axis and failed (the cold main job: lstm, then lstm_tiny).
    Each export has its own cache root: both are real, cold exports."""
    spec = get_model("lstm_tiny")
    for run in ("first", "second"):
        export = ExportedModel(spec, root=tmp_path / run, exporter="dynamo").onnx
        assert not export.cached
        assert _seq_dim(export.path), f"{run} export: sequence axis is not symbolic"
