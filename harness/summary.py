"""Plain-text summaries of records for terminals."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from harness.core.record import Record
from harness.core.types import FAILING, backend_sort_key, precision_sort_key, status_info


def status_table(records: Sequence[Record]) -> str:
    """Counts of statuses per backend x precision, then the fallbacks, failures and stale known failures."""
    cells: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for r in records:
        cells[(r.backend, r.precision)][r.status] += 1
    backends = sorted({b for b, _ in cells}, key=backend_sort_key)
    precisions = sorted({q for _, q in cells}, key=precision_sort_key)
    width = max(12, *(len(_cell(cells.get((b, p)))) + 2 for b in backends for p in precisions))
    lines = ["backend   " + "".join(p.ljust(width) for p in precisions)]
    for b in backends:
        lines.append(b.ljust(10) + "".join(_cell(cells.get((b, p))).ljust(width) for p in precisions))
    sections = [
        ("precision fallbacks (outputs match, no evidence the requested precision executed):",
         [f"  {r.case_id}: executed {r.executed_precision}" for r in records if r.status == "fallback"]),
        ("failures (by cause):", [f"  [{r.cause or '?'}] {r.case_id}: {r.status}: {r.reason[:160]}"
                                  for r in sorted(records, key=lambda r: (r.cause, r.case_id)) if r.status in FAILING]),
        ("not run, charged to the harness (bugs of ours):",
         [f"  {r.case_id}: {r.status}: {r.reason[:160]}" for r in records
          if r.cause == "harness" and r.status in ("unsupported", "skipped")]),
        ("known-failure entries whose case passed (update them):",
         [f"  {r.case_id}: {r.reason[:160]}" for r in records if r.status == "xpass"]),
    ]
    for title, rows in sections:
        if rows:
            lines += [title, *rows]
    causes = Counter(r.cause for r in records if r.status != "pass")
    if causes:
        lines.append("non-pass cells by cause: " + ", ".join(f"{c or 'unattributed'} {n}" for c, n in
                                                                sorted(causes.items(), key=lambda kv: -kv[1])))
    return "\n".join(lines)


def _cell(counter: Counter[str] | None) -> str:
    if not counter:
        return "-"
    return " ".join(f"{n} {_abbrev(s)}" for s, n in sorted(counter.items(), key=lambda kv: -kv[1]))


def _abbrev(status: str) -> str:
    info = status_info(status)
    return info.abbrev if info else status
