"""``harness models``: one row per zoo model (inputs, parameters, FLOPs, exporter, description).

Counting parameters and FLOPs builds the model and runs its forward. Users' zoo-file models are counted
in a child process with a time limit (``describe(isolate=...)``): their code may hang, crash or fork,
and the listing must still finish.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from harness.core.spec import ModelSpec
from model_zoo.registry import _UNAVAILABLE, ModelUnavailable

COUNT_TIMEOUT_S = 120.0
"""Default limit for counting all isolated models together (``harness models --timeout``)."""


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


def unavailable_models() -> dict[str, str]:
    """Zoo models that cannot be built here (an optional package is missing), with the reason."""
    return dict(_UNAVAILABLE)


def describe(names: Iterable[str], *, isolate: Iterable[str] = (), zoo_files: Sequence[str] = (),
             timeout_s: float = COUNT_TIMEOUT_S) -> list[dict[str, Any]]:
    """One row per model: name, tags, inputs, parameters, FLOPs, exporter, opset, description, source.

    A model that cannot be built here (optional package missing) gets its row
    with ``unavailable`` set to the reason and no counts. Models in ``isolate``
    (users' models, registered by ``zoo_files``) are built and counted in one
    child process limited to ``timeout_s`` for all of them: a model it did not
    count (hung, crashed, raised) gets ``note`` saying why and no counts.
    """
    from model_zoo.lookup import get_model

    names = list(names)
    isolated = [n for n in names if n in set(isolate)]
    counted = count_in_child(isolated, zoo_files, timeout_s) if isolated else {}
    rows = []
    for name in names:
        try:
            spec = get_model(name)
        except ModelUnavailable as exc:
            rows.append({"name": name, "tags": [], "inputs": "", "params": None, "flops": None, "exporter": "",
                         "opset": None, "description": "", "source": "", "unavailable": str(exc)})
            continue
        if name in counted:
            counts = counted[name]
        else:
            module = spec.build() if spec.onnx_file is None else None  # ONNX-native models have no torch module
            counts = {"params": None if module is None else sum(p.numel() for p in module.parameters()),
                      "flops": None if module is None else count_flops(spec, module)}
        rows.append({
            "name": name, "tags": sorted(spec.tags), "inputs": _inputs_text(spec), "params": counts["params"],
            "flops": counts["flops"], "exporter": spec.exporter, "opset": spec.opset,
            "description": spec.description, "source": spec.source, "unavailable": None,
            **({"note": counts["note"]} if counts.get("note") else {}),
        })
    return rows


def count_in_child(names: Sequence[str], zoo_files: Sequence[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    """Parameters and FLOPs of ``names`` counted in ``python -m model_zoo.listing`` (its own process group,
    killed with everything it started after ``timeout_s``); every name gets a row, with ``note`` when uncounted."""
    root = str(Path(__file__).resolve().parent.parent)  # the child imports this same model_zoo
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    with tempfile.TemporaryDirectory(prefix="harness-models-") as tmp:
        out, log = Path(tmp) / "counts.jsonl", Path(tmp) / "child.log"
        job = json.dumps({"names": list(names), "zoo_files": [str(f) for f in zoo_files], "out": str(out)})
        with log.open("wb") as log_file:  # files, not pipes: a process the model forked may keep a pipe open
            proc = subprocess.Popen([sys.executable, "-m", "model_zoo.listing", job], stdin=subprocess.DEVNULL,
                                    stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            proc.wait(timeout_s)
            why = f"the counting process exited with code {proc.returncode} before this model"
        except subprocess.TimeoutExpired:
            why = f"not counted: building and running it took longer than {timeout_s:g} s (harness models --timeout)"
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the child and whatever the models' code started
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        tail = " ".join(log.read_text(errors="replace").strip().splitlines()[-1:])[:300]
    counted: dict[str, dict[str, Any]] = {r["name"]: r for r in rows}
    note = why + (f"; its last output: {tail}" if tail and "exited" in why else "")
    return {n: counted.get(n) or {"params": None, "flops": None, "note": note} for n in names}


def _count_main(job_json: str) -> int:
    """The child of ``count_in_child``: load the zoo files, then one JSON line per model as it is counted."""
    from model_zoo.lookup import get_model, load_zoo_file

    job = json.loads(job_json)
    for f in job["zoo_files"]:
        load_zoo_file(f)
    with open(job["out"], "a") as out:
        for name in job["names"]:
            try:
                spec = get_model(name)
                module = spec.build() if spec.onnx_file is None else None
                row = {"name": name, "params": None if module is None else sum(p.numel() for p in module.parameters()),
                       "flops": None if module is None else count_flops(spec, module)}
            except Exception as exc:  # the row says why; the next model is still counted
                row = {"name": name, "params": None, "flops": None,
                       "note": f"not counted: building it raised {type(exc).__name__}: {exc}"}
            out.write(json.dumps(row) + "\n")
            out.flush()
    return 0


def format_table(rows: Iterable[dict[str, Any]]) -> str:
    """Aligned plain-text table of ``describe`` rows (unavailable models show the reason)."""
    header = ("model", "params", "FLOPs", "inputs", "tags")
    lines = []
    for r in rows:
        if r.get("unavailable"):  # the reason goes last, so it does not widen the other columns
            lines.append((r["name"], "-", "-", "-", f"unavailable: {r['unavailable']}"))
        else:
            note = f"  ({r['note']})" if r.get("note") else ""
            lines.append((r["name"], _human(r["params"]), _human(r["flops"]), r["inputs"], ",".join(r["tags"]) + note))
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


if __name__ == "__main__":
    sys.exit(_count_main(sys.argv[1]))
