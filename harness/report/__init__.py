"""Reports: the HTML dashboard of runs, run-vs-run regression checks, and trends over time."""

from __future__ import annotations

from harness.report.dashboard import build_report

__all__ = ["build_report"]
