"""Export paths: each zoo model through both torch exporters, and the opset sweep.

``test_exporters``: the TorchScript and dynamo exporters each export the model
(onnx.checker runs inside the export), and ONNX Runtime FP32 runs the result on
the model's input sets against PyTorch. One record per exporter (suite
``export``, backend = the exporter's name, precision fp32) with the opset really
written, export time, captured warnings and the graph's op counts (a traced
loop shows unrolled Gemms, a scripted one a ``Loop``). The model's declared
exporter must export and verify; the other one's outcome is recorded, not asserted.

``test_opset_sweep``: models tagged ``opset`` exported at several opsets and
loaded on ORT and OpenVINO (when installed): one record per opset x backend with
``extra={"opset": N}``. At and above the model's declared opset ORT must pass.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.core.options import CaseRequest, ExportOptions
from harness.core.record import Record
from harness.core.types import Precision, Status
from harness.pytest_plugin import HarnessConfig, apply_outcome
from harness.run.case import run_case

pytestmark = pytest.mark.export

EXPORTERS = ("torchscript", "dynamo")
SWEEP_OPSETS = (13, 15, 16, 17, 18, 20)
SWEEP_BACKENDS = ("ort", "ov")


def run_unrecorded(hc: HarnessConfig, case: CaseRequest) -> Record:
    """Run a case like the plugin does (child process unless --in-process) without appending its record."""
    if hc.in_process:
        return run_case(case)
    from harness.exec.supervisor import run_in_subprocess

    return run_in_subprocess(case, timeout_s=hc.case_timeout_s)


def append(hc: HarnessConfig, record: Record) -> None:
    hc.store.append(record)
    hc.records.append(record)


def graph_ops(path: str | None) -> dict[str, Any]:
    """Top-level node count and op histogram of an ONNX file, plus nodes inside subgraphs (Loop/If bodies)."""
    if not path or not Path(path).is_file():
        return {}
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    ops = Counter(n.op_type for n in graph.node)
    nested = sum(len(a.g.node) for n in graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH)
    return {"nodes": len(graph.node), "ops": dict(sorted(ops.items())), "subgraph_nodes": nested}


def _skip_if_not_exportable(model: str) -> None:
    from model_zoo import get_model

    if get_model(model).onnx_file is not None:
        pytest.skip(f"{model} is ONNX-native: there is no torch module to export")


def test_exporters(zoo_model, harness_config):
    from model_zoo import get_model

    _skip_if_not_exportable(zoo_model)
    spec = get_model(zoo_model)
    hc = harness_config
    records = {}
    for exporter in EXPORTERS:
        case = CaseRequest(zoo_model, "ort", Precision.FP32, run_id=hc.store.run_id, suite="export",
                           threads=hc.threads, zoo_files=hc.zoo_files, test_id=f"{zoo_model}-{exporter}-export",
                           export=ExportOptions(exporter=exporter))
        verified = run_unrecorded(hc, case)
        export = verified.export
        record = replace(verified, backend=exporter, backend_version=_torch_version(), extra={
            **verified.extra, "exporter": exporter, "declared": exporter == spec.exporter, "verified_on": "ort",
            "ort_version": verified.backend_version, "opset": export.get("opset"),
            "export_s": export.get("seconds"), "warnings": list(export.get("warnings", ())),
            "checker": export.get("checker"), **graph_ops(export.get("path")),
        })
        append(hc, record)
        records[exporter] = record
    declared = apply_outcome(records[spec.exporter])
    assert declared.status == Status.PASS.value, (
        f"declared exporter {spec.exporter}: {declared.status}: {declared.reason}; "
        + "; ".join(f"{e}: {r.status}" for e, r in records.items())
    )


@pytest.mark.harness_cases(tags=["opset"])
@pytest.mark.parametrize("opset", SWEEP_OPSETS)
def test_opset_sweep(zoo_model, opset, harness_config):
    from harness import backends
    from model_zoo import get_model

    _skip_if_not_exportable(zoo_model)
    spec = get_model(zoo_model)
    hc = harness_config
    results = {}
    for backend in [b for b in SWEEP_BACKENDS if b in hc.backends]:
        case = CaseRequest(zoo_model, backend, Precision.FP32, run_id=hc.store.run_id, suite="export",
                           threads=hc.threads, zoo_files=hc.zoo_files, test_id=f"{zoo_model}-{backend}-opset{opset}",
                           export=ExportOptions(opset=opset))
        record = run_unrecorded(hc, case)
        record = replace(record, extra={**record.extra, "opset": opset, "declared_opset": spec.opset,
                                        "written_opset": record.export.get("opset"),
                                        "reads_onnx": backends.get(backend).needs_onnx})
        append(hc, record)
        results[backend] = record
    if "ort" not in results:
        pytest.skip("the opset sweep's assertion needs the ort backend (not selected)")
    ort = results["ort"]
    if opset >= spec.opset:
        assert ort.status == Status.PASS.value, f"opset {opset} >= declared {spec.opset}: {ort.status}: {ort.reason}"


def _torch_version() -> str:
    from harness.core.machine import module_version

    return module_version("torch")
