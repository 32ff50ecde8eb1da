"""``harness models``: one row per zoo model (inputs, parameters, FLOPs, exporter, description)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from harness.core.spec import ModelSpec
from model_zoo.registry import ModelUnavailable


def _inputs_text(spec: ModelSpec) -> str:
    parts = []
    for t in spec.inputs:
        dims = ",".join(str(d) if isinstance(d, int) else f"{d}={'|'.join(map(str, spec.dynamic_sizes[d]))}"
                        for d in t.shape)
        parts.append(f"{t.name}[{dims}] {t.dtype}")
    return "; ".join(parts)


def count_flops(spec: ModelSpec, module: Any) -> int | None:
    """FLOPs of one forward pass on the export example (None when the counter cannot run the model)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from harness.model.inputs import export_example
    from harness.model.reference import mha_fastpath_disabled

    feeds = export_example(spec)
    args = [torch.from_numpy(feeds[t.name]) for t in spec.inputs]
    try:
        with torch.no_grad(), mha_fastpath_disabled(), FlopCounterMode(display=False) as counter:
            module(*args)
    except Exception:  # an uncountable model lists "-" rather than failing the listing
        return None
    return int(counter.get_total_flops())


def describe(names: Iterable[str]) -> list[dict[str, Any]]:
    """One row per model: name, tags, inputs, parameters, FLOPs, exporter, opset, description, source.

    A model that cannot be built here (optional package missing) gets its row
    with ``unavailable`` set to the reason and no counts.
    """
    from model_zoo.lookup import get_model

    rows = []
    for name in names:
        try:
            spec = get_model(name)
        except ModelUnavailable as exc:
            rows.append({"name": name, "tags": [], "inputs": "", "params": None, "flops": None, "exporter": "",
                         "opset": None, "description": "", "source": "", "unavailable": str(exc)})
            continue
        module = spec.build() if spec.onnx_file is None else None  # ONNX-native models have no torch module
        rows.append({
            "name": name, "tags": sorted(spec.tags), "inputs": _inputs_text(spec),
            "params": None if module is None else sum(p.numel() for p in module.parameters()),
            "flops": None if module is None else count_flops(spec, module),
            "exporter": spec.exporter, "opset": spec.opset, "description": spec.description, "source": spec.source,
            "unavailable": None,
        })
    return rows


def format_table(rows: Iterable[dict[str, Any]]) -> str:
    """Aligned plain-text table of ``describe`` rows (unavailable models show the reason)."""
    header = ("model", "params", "FLOPs", "inputs", "tags")
    lines = []
    for r in rows:
        if r.get("unavailable"):  # the reason goes last, so it does not widen the other columns
            lines.append((r["name"], "-", "-", "-", f"unavailable: {r['unavailable']}"))
        else:
            lines.append((r["name"], _human(r["params"]), _human(r["flops"]), r["inputs"], ",".join(r["tags"])))
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    return "\n".join(out)


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)
