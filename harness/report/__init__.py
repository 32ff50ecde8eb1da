"""Reports: the HTML dashboard of runs, run-vs-run regression checks, trends over time, the nightly site.

``build_report`` and ``trend_report`` write self-contained HTML (plotly.js embedded once, no
network); ``build_site`` writes a directory of pages sharing one plotly.min.js; ``compare_runs``
returns a :class:`CompareOutcome` whose ``exit_code`` gates CI (0 ok, 1 regression, 2 nothing
comparable, 3 missing cases or measurements).
"""

from __future__ import annotations

from harness.report.compare_view import compare_runs
from harness.report.dashboard import build_report
from harness.report.regress import CaseDiff, CompareOutcome, Regression
from harness.report.site import build_site
from harness.report.thresholds import Criteria, FailOn, FailOnSyntaxError, parse_criteria, parse_fail_on
from harness.report.trend import trend_report

__all__ = ["CaseDiff", "CompareOutcome", "Criteria", "FailOn", "FailOnSyntaxError", "Regression", "build_report",
           "build_site", "compare_runs", "parse_criteria", "parse_fail_on", "trend_report"]
