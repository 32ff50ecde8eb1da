"""Preparing ONNX files for an engine's tools the way the tools document it.

Old ONNX files (IR < 4, e.g. the ``light_*`` models of opset 9) list every
initializer as a graph input. ONNX Runtime treats such inputs as overridable,
and once ``quant_pre_process`` folds or deduplicates initializers they become
required inputs ("Required inputs (['conv4_b_0__SHAPE', ...]) are missing");
pnnx takes ``graph.input[0]`` as the model input and stops ("expect [16]f32").
ORT ships ``onnxruntime.tools.remove_initializer_from_input`` for exactly this;
``drop_initializer_inputs`` does the same (so the ncnn path needs no ORT), raising
the IR to 4 first, the first IR where initializers need not be inputs (opset 9 is
valid at IR 4), as that tool requires.

Per-channel Q/DQ needs ``DequantizeLinear``'s ``axis`` (opset >= 13), and pnnx
reads an opset < 13 ``Softmax`` without ``axis`` as ``dim=-1`` (opset 13's
default; measured: SqueezeNet's output all 1.0): ``upgrade_opset`` runs ONNX's
version converter first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def initializers_as_inputs(model: Any) -> bool:
    """True when some graph input is also an initializer (old-IR style)."""
    inits = {i.name for i in model.graph.initializer}
    return any(i.name in inits for i in model.graph.input)


def drop_initializer_inputs(model: Any) -> Any:
    """``model`` with its initializers removed from ``graph.input`` (IR raised to 4 where lower)."""
    if not initializers_as_inputs(model):
        return model
    model.ir_version = max(model.ir_version, 4)
    inits = {i.name for i in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return model


def opset_of(model: Any) -> int:
    """The model's default-domain opset."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def upgrade_opset(model: Any, opset: int = 13) -> Any:
    """``model`` converted to at least ``opset`` by onnx.version_converter (IR raised to what it needs)."""
    import onnx
    from onnx import version_converter

    if opset_of(model) >= opset:
        return model
    model = version_converter.convert_version(model, opset)
    need = onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)])
    model.ir_version = max(model.ir_version, need)
    return model


def prepared(src: Path, out: Path, *, min_opset: int | None = None) -> tuple[Path, list[str]]:
    """Write ``src`` prepared for a tool to ``out`` when it needs preparing; returns (path to use, steps done)."""
    import onnx

    model = onnx.load(str(src))
    steps = []
    if initializers_as_inputs(model):
        model = drop_initializer_inputs(model)
        steps.append("initializers removed from graph inputs (as onnxruntime.tools.remove_initializer_from_input)")
    if min_opset is not None and opset_of(model) < min_opset:
        before = opset_of(model)
        model = upgrade_opset(model, min_opset)
        steps.append(f"opset {before} -> {min_opset} (onnx.version_converter)")
    if not steps:
        return src, steps
    onnx.save(model, str(out))
    return out, steps


def has_attention(path: Path) -> bool:
    """True when the graph multiplies two activations (a MatMul with no constant operand feeding a Softmax
    path): the transformer family, whose INT8 recipe differs from a CNN's."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    act_matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and not set(n.input) & consts]
    return len(act_matmuls) >= 2 and any(n.op_type == "Softmax" for n in model.graph.node)


SHAPE_INPUTS = {"Resize": (1, 2, 3), "Upsample": (1,), "Reshape": (1,), "Expand": (1,), "Tile": (1,),
                "Slice": (1, 2, 3, 4), "Pad": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2)}
"""Inputs (by position) that carry shapes, scales or indices, not activations."""


def shape_computing_nodes(path: Path, *, consumers: bool = False) -> list[str]:
    """Names of the nodes whose outputs only feed shape/scale inputs (e.g. the Concat building a Resize's
    scales from a run-time factor): quantizing them would round the scale itself (1 -> 1.0039).

    ``consumers`` adds the nodes that take such inputs (the Resize itself): NNCF quantizes every input of an
    op it quantizes, so the op must be left float too; ORT's quantizer leaves a Resize's scales alone.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    found: dict[str, None] = {}
    takers = [n for n in graph.node if any(i < len(n.input) and n.input[i] and n.input[i] in producer
                                           for i in SHAPE_INPUTS.get(n.op_type, ()))]
    if consumers:
        found.update({n.name: None for n in takers if n.op_type in ("Resize", "Upsample")})
    stack = [n.input[i] for n in graph.node for i in SHAPE_INPUTS.get(n.op_type, ()) if i < len(n.input)]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in found:
            continue
        found[node.name] = None
        if node.op_type not in ("Shape", "Size"):  # these read only the shape of an activation
            stack.extend(node.input)
    return [name for name in found if name]
