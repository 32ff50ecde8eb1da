"""Plain-text summaries of records for terminals."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from harness.results import Record

ABBREV = {"pass": "pass", "fallback": "FALLBK", "mismatch": "MISM", "nonfinite": "NaN", "export_failed": "EXPF",
          "convert_failed": "CONVF", "unsupported": "unsup", "crash": "CRASH", "timeout": "TIME", "skipped": "skip",
          "xfail": "xfail", "xpass": "XPASS", "error": "ERR"}


def status_table(records: Sequence[Record]) -> str:
    """Counts of statuses per backend x precision, then the fallbacks and failures listed."""
    cells: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for r in records:
        cells[(r.backend, r.precision)][r.status] += 1
    backends = sorted({b for b, _ in cells}, key=_order)
    precisions = [p for p in ("fp32", "fp16", "int8") if any(p == q for _, q in cells)]
    precisions += sorted({q for _, q in cells} - set(precisions))
    width = max(12, *(len(_cell(cells.get((b, p)))) + 2 for b in backends for p in precisions))
    lines = ["backend   " + "".join(p.ljust(width) for p in precisions)]
    for b in backends:
        lines.append(b.ljust(10) + "".join(_cell(cells.get((b, p))).ljust(width) for p in precisions))
    fallbacks = [r for r in records if r.status == "fallback"]
    if fallbacks:
        lines.append("precision fallbacks (outputs match, requested precision did not execute):")
        lines += [f"  {r.case_id}: executed {r.executed_precision}" for r in fallbacks]
    bad = [r for r in records if r.status in ("mismatch", "nonfinite", "export_failed", "convert_failed", "crash",
                                              "timeout", "error", "xpass")]
    if bad:
        lines.append("failures:")
        lines += [f"  {r.case_id}: {r.status}: {r.reason[:160]}" for r in bad]
    return "\n".join(lines)


def _cell(counter: Counter[str] | None) -> str:
    if not counter:
        return "-"
    return " ".join(f"{n} {ABBREV.get(s, s)}" for s, n in sorted(counter.items(), key=lambda kv: -kv[1]))


def _order(name: str) -> tuple[int, str]:
    order = ["torch", "ort", "ov", "ncnn", "trt"]
    return (order.index(name) if name in order else len(order), name)
