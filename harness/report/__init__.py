"""Reports: the HTML dashboard of runs, run-vs-run regression checks, and trends over time.

``build_report`` and ``trend_report`` write self-contained HTML (plotly.js embedded once, no
network); ``compare_runs`` returns a :class:`CompareOutcome` whose ``exit_code`` gates CI.
"""

from __future__ import annotations

from harness.report.compare_view import compare_runs
from harness.report.dashboard import build_report
from harness.report.regress import CaseDiff, CompareOutcome, Regression
from harness.report.thresholds import FailOn, FailOnSyntaxError, parse_fail_on
from harness.report.trend import trend_report

__all__ = ["CaseDiff", "CompareOutcome", "FailOn", "FailOnSyntaxError", "Regression", "build_report",
           "compare_runs", "parse_fail_on", "trend_report"]
