"""Text formatting shared by the report's data and view modules: HTML/plotly escaping, numbers."""

from __future__ import annotations

import html
import math
from typing import Any


def esc(value: Any) -> str:
    """Escape text for HTML (element content and quoted attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def pesc(value: Any, limit: int | None = None) -> str:
    """Escape text for plotly labels and hover text (plotly parses a subset of HTML tags)."""
    text = "" if value is None else str(value)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return html.escape(text, quote=False)


def pwrap(value: Any, width: int = 90, limit: int = 400) -> str:
    """Escaped plotly text wrapped with ``<br>`` every ``width`` characters (long engine errors)."""
    text = "" if value is None else str(value)
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    chunks = [text[i:i + width] for i in range(0, len(text), width)] or [""]
    return "<br>".join(html.escape(c, quote=False) for c in chunks)


def fmt(value: Any, digits: int = 3) -> str:
    """Human formatting of a number (blank for missing)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:,.{max(digits - 1, 1)}f}".rstrip("0").rstrip(".")
    return str(value)
