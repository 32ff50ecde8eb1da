"""The HTML page: escaping, tables, styles, scripts; plotly.js embedded once, or shared by the pages of a site."""

from __future__ import annotations

import contextlib
import contextvars
import errno
import math
import numbers
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.types import STATUS_TABLE
from harness.report.text import esc, fmt
from harness.results import write_file_atomic

_PLOTLY_SRC: contextvars.ContextVar[str | None] = contextvars.ContextVar("plotly_src", default=None)
"""When set, pages reference this URL of plotly.js instead of embedding the 4.8 MB library."""


@contextlib.contextmanager
def shared_plotly(src: str) -> Iterator[None]:
    """Pages rendered inside reference plotly.js at ``src`` (a URL relative to the page) instead of embedding it."""
    token = _PLOTLY_SRC.set(src)
    try:
        yield
    finally:
        _PLOTLY_SRC.reset(token)


def plotly_js() -> str:
    """The plotly.js bundle that ships with the installed plotly package (what pages embed or reference)."""
    import plotly.offline

    return plotly.offline.get_plotlyjs()


class OutputPathError(ValueError):
    """An output path that cannot be written (a directory, a read-only place, a missing parent)."""


def write_atomic(out: str | Path, text: str) -> Path:
    """Write ``text`` to ``out`` via a temporary file in the same directory and return ``out``.

    Raises OutputPathError (no temporary file left behind) when ``out`` is a directory or cannot be written.
    """
    out = Path(out)
    if out.is_dir():
        raise OutputPathError(f"output {out} is a directory: pass a file name such as {out / 'report.html'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomic(out, text.encode("utf-8"))
    except OSError as exc:
        why = exc.strerror or str(exc)
        hint = "free some space or pass -o on another disk" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else \
            "pass -o with a file in a writable directory"
        raise OutputPathError(f"cannot write {out}: {why}; {hint}") from exc
    return out

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["select2d", "lasso2d"]}


def css_token(value: str) -> str:
    """A safe class-name fragment."""
    return re.sub(r"[^a-z0-9_-]", "-", value.lower())


@dataclass(frozen=True)
class Column:
    """A table column: ``key`` into the row dicts, a header, and how to show it."""

    key: str
    label: str
    numeric: bool = False
    status: bool = False
    render: Callable[[Any], str] | None = None  # returns already-escaped HTML
    wide: bool = False


def status_badge(status: str) -> str:
    """A coloured status label."""
    return f'<span class="st st-{css_token(status)}">{esc(status)}</span>'


def table(columns: Sequence[Column], rows: Iterable[dict[str, Any]], table_id: str, *, empty: str = "no rows",
          row_class: Callable[[dict[str, Any]], str] | None = None) -> str:
    """A sortable, filterable table; every cell is HTML-escaped unless its column renders it."""
    rows = list(rows)
    if not rows:
        return f'<p class="note">{esc(empty)}</p>'
    head = "".join(f'<th data-type="{"num" if c.numeric else "text"}" tabindex="0">{esc(c.label)}</th>'
                   for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c.key)
            if c.render is not None:
                shown = c.render(value)
            elif c.status:
                shown = status_badge(str(value))
            else:
                shown = esc(fmt(value))
            real = isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)
            sort = value if c.numeric and real else ""
            sort_attr = f' data-v="{esc(sort)}"' if c.numeric else ""
            cls = ' class="wide"' if c.wide else (' class="num"' if c.numeric else "")
            cells.append(f"<td{sort_attr}{cls}>{shown}</td>")
        cls = f' class="{esc(row_class(row))}"' if row_class else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    count = f"{len(rows)} row" + ("s" if len(rows) != 1 else "")
    return (f'<div class="tablebox"><div class="tools"><input type="search" class="filter" data-table="{esc(table_id)}"'
            f' placeholder="filter rows (all words must match)" aria-label="filter table">'
            f' <span class="count" id="{esc(table_id)}-count">{count}</span></div>'
            f'<div class="scroll"><table class="data" id="{esc(table_id)}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div></div>')


def figure(fig: Any, div_id: str) -> str:
    """A plotly figure as a div plus its drawing script (the library itself is embedded once per page)."""
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOTLY_CONFIG)


def note(text: str) -> str:
    """A grey explanatory paragraph (escaped)."""
    return f'<p class="note">{esc(text)}</p>'


def section(anchor: str, title: str, intro: str, body: str) -> str:
    """A titled card."""
    return (f'<section class="card" id="{esc(anchor)}"><h2>{esc(title)}</h2>'
            f'{note(intro) if intro else ""}{body}</section>')


def _status_css() -> str:
    rules = []
    for status, info in STATUS_TABLE.items():
        text = "#222" if info.dark_text else "#fff"
        rules.append(f".st-{status.value}{{background:{info.colour};color:{text}}}")
    return "\n".join(rules)


CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:#1d2330;background:#f3f5f8}
header.top{background:#1f2a3c;color:#fff;padding:14px 28px;position:sticky;top:0;z-index:10;
 display:flex;flex-wrap:wrap;gap:10px 24px;align-items:center}
header.top h1{font-size:19px;margin:0;font-weight:600}
header.top .meta{color:#b9c3d3;font-size:12.5px}
header.top nav a{color:#d7e3ff;margin-right:12px;text-decoration:none;font-size:13px}
header.top nav a:hover{text-decoration:underline}
header.top select{font-size:13px;padding:3px 6px;border-radius:4px}
main{max-width:1480px;margin:0 auto;padding:18px 24px 60px}
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:16px 22px;margin:0 0 18px;
 overflow:hidden}
.card h2{font-size:17px;margin:0 0 6px}
.card h3{font-size:14.5px;margin:14px 0 6px}
.note{color:#5b6475;margin:2px 0 10px;font-size:13px}
.machine-title{font-size:15px;color:#1f2a3c;margin:6px 0 12px;font-weight:600}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:6px 26px}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:3px 14px;margin:0}
dl.kv dt{color:#5b6475}
dl.kv dd{margin:0;word-break:break-word}
.st{display:inline-block;margin:1px 3px 1px 0;padding:1px 7px;border-radius:9px;font-size:12px;font-weight:600;
 white-space:nowrap}
.badges .st{margin:2px 4px 2px 0;font-size:12.5px}
.tablebox{margin:6px 0 4px}
.tools{margin:4px 0 6px}
.tools input{width:340px;max-width:100%;padding:5px 8px;border:1px solid #c8ced8;border-radius:4px}
.count{color:#5b6475;font-size:12px;margin-left:8px}
.scroll{overflow:auto;max-height:560px;border:1px solid #e3e7ee;border-radius:4px}
table.data{border-collapse:collapse;width:100%;font-size:12.5px}
table.data th{position:sticky;top:0;background:#eef1f6;text-align:left;padding:6px 8px;cursor:pointer;
 white-space:nowrap;border-bottom:1px solid #d5dbe5;user-select:none}
table.data th:after{content:" \\2195";color:#9aa3b2;font-size:11px}
table.data th[aria-sort=ascending]:after{content:" \\25B2";color:#1f2a3c}
table.data th[aria-sort=descending]:after{content:" \\25BC";color:#1f2a3c}
table.data td{padding:4px 8px;border-bottom:1px solid #eef0f4;vertical-align:top;white-space:nowrap}
table.data td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.data td.wide{min-width:320px;max-width:720px;white-space:normal;word-break:break-word}
table.data tr:hover td{background:#f7f9fc}
tr.regression td{background:#fdecea}
tr.improved td{background:#eaf7ee}
.pill{display:inline-block;padding:1px 8px;border-radius:9px;background:#eef1f6;margin:2px 4px 2px 0;font-size:12px}
.alert{color:#b3261e;font-weight:600}
.ok{color:#2e7d32;font-weight:600}
pre.text{background:#0f1722;color:#e6edf3;padding:12px;border-radius:6px;overflow:auto;font-size:12px}
"""

JS = r"""
(function(){
  function cellValue(row, i, num){
    var td = row.cells[i]; if(!td) return num ? NaN : "";
    if(num){ var v = td.getAttribute("data-v"); return v === null || v === "" ? NaN : parseFloat(v); }
    return td.textContent.trim().toLowerCase();
  }
  function sortBy(th){
    var table = th.closest("table"), idx = Array.prototype.indexOf.call(th.parentNode.children, th);
    var num = th.getAttribute("data-type") === "num";
    var asc = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(th.parentNode.children, function(h){ h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function(a, b){
      var x = cellValue(a, idx, num), y = cellValue(b, idx, num);
      if(num){ var xn = isNaN(x), yn = isNaN(y); if(xn || yn) return xn === yn ? 0 : (xn ? 1 : -1);
               return asc ? x - y : y - x; }
      return asc ? x.localeCompare(y) : y.localeCompare(x);
    });
    rows.forEach(function(r){ body.appendChild(r); });
  }
  function applyFilter(input){
    var table = document.getElementById(input.getAttribute("data-table")); if(!table) return;
    var words = input.value.toLowerCase().split(/\s+/).filter(Boolean), shown = 0, rows = table.tBodies[0].rows;
    for(var i = 0; i < rows.length; i++){
      var text = rows[i].textContent.toLowerCase();
      var ok = words.every(function(w){ return text.indexOf(w) >= 0; });
      rows[i].style.display = ok ? "" : "none"; if(ok) shown++;
    }
    var count = document.getElementById(table.id + "-count");
    if(count) count.textContent = shown + " of " + rows.length + " rows";
  }
  function resizePlots(root){
    if(!window.Plotly) return;
    (root || document).querySelectorAll(".js-plotly-plot").forEach(function(el){
      if(el.offsetParent !== null) window.Plotly.Plots.resize(el); });
  }
  function showMachine(id){
    document.querySelectorAll("[data-machine]").forEach(function(s){
      s.style.display = s.getAttribute("data-machine") === id ? "" : "none"; });
    resizePlots();
  }
  document.addEventListener("click", function(e){
    var th = e.target.closest && e.target.closest("table.data th"); if(th) sortBy(th); });
  document.addEventListener("keydown", function(e){
    var th = e.target.closest && e.target.closest("table.data th");
    if(th && (e.key === "Enter" || e.key === " ")){ e.preventDefault(); sortBy(th); } });
  document.addEventListener("input", function(e){
    if(e.target.classList && e.target.classList.contains("filter")) applyFilter(e.target); });
  window.addEventListener("DOMContentLoaded", function(){
    var params = new URLSearchParams(window.location.search), q = params.get("q");
    if(q !== null) document.querySelectorAll("input.filter").forEach(function(i){ i.value = q; applyFilter(i); });
    var sel = document.getElementById("machine-select");
    if(sel){
      var m = params.get("machine");
      if(m !== null) sel.value = m;
      sel.addEventListener("change", function(){ showMachine(sel.value); });
      showMachine(sel.value);
    }
  });
})();
"""


def page(title: str, subtitle: str, body: str, *, nav: Sequence[tuple[str, str]] = (), selector: str = "",
         figures: bool = True) -> str:
    """The whole document: styles, plotly.js (inline once, or a reference inside ``shared_plotly``; none
    when the page has no ``figures``), the table/selector script and ``body``."""
    src = _PLOTLY_SRC.get()
    plotly = "" if not figures else f'<script src="{esc(src)}" charset="utf-8"></script>' if src else \
        f"<script>{plotly_js()}</script>"
    links = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in nav)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{esc(title)}</title><style>{CSS}{_status_css()}</style>"
        f"{plotly}<script>{JS}</script></head><body>"
        f'<header class="top"><div><h1>{esc(title)}</h1><div class="meta">{esc(subtitle)}</div></div>'
        f"<nav>{links}</nav>{selector}</header><main>{body}</main></body></html>\n"
    )


def machine_selector(machines: Sequence[str]) -> str:
    """A <select> switching between per-machine sections (empty for a single machine)."""
    if len(machines) < 2:
        return ""
    options = "".join(f'<option value="{esc(m)}">{esc(m)}</option>' for m in machines)
    return f'<label class="meta">machine <select id="machine-select">{options}</select></label>'
