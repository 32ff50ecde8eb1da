"""The report rendered by headless Chromium: every figure draws, no script error, record text stays text."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from harness.report import build_report, compare_runs, trend_report

CHROMIUM = Path("/usr/bin/chromium")
RUNS = Path(__file__).parent / "data" / "runs"
PROBE = "harness-console-probe"
ALERT = "harness-alert-called"
# alert() from injected markup would block a headless page until the timeout; log it instead
ALERT_HOOK = f'<script>window.alert = function(m){{ console.error("{ALERT} " + m); }};</script>'

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent: install Chromium (Debian: apt-get "
                       "install chromium) to render the report in a headless browser"),
]


def render(page: Path, tmp: Path, query: str = "") -> tuple[str, str]:
    """Load ``page`` (with a console probe and an alert() hook added) and return (DOM after scripts ran, log)."""
    probed = page.with_name(f"probed-{page.name}")
    text = page.read_text().replace("<head>", f"<head>{ALERT_HOOK}", 1)
    probed.write_text(text.replace("</body>", f'<script>console.error("{PROBE}")</script></body>'))
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0",
           "--dump-dom", probed.as_uri() + query]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert PROBE in proc.stderr, "the browser log did not capture console output: errors would go unseen"
    return proc.stdout, proc.stderr


def console_errors(log: str) -> list[str]:
    """Console lines reporting a script error, or an alert() call (injected markup ran)."""
    return [line for line in log.splitlines() if ":CONSOLE" in line and PROBE not in line
            and re.search(rf"Uncaught|Error|error|{ALERT}", line)]


def plotted(dom: str) -> int:
    return len(re.findall(r'class="[^"]*\bjs-plotly-plot\b', dom))


def test_report_renders_in_chromium(tmp_path):
    page = build_report([RUNS], tmp_path / "report.html")
    source = page.read_text()
    dom, log = render(page, tmp_path, "?q=mismatch&machine=arm-laptop-77d2e0")
    assert console_errors(log) == []
    figures = source.count('class="plotly-graph-div"')
    assert figures == 9
    assert plotted(dom) == figures  # every figure was drawn by plotly.js ...
    assert dom.count('class="main-svg"') >= figures  # ... into SVG
    # the malicious model name is text: no <img> element appeared, plotly drew it as a literal tick label
    assert not re.search(r"<img[^>]*onerror", dom)
    assert re.search(r"<text[^>]*>[^<]*&lt;img src=x onerror=alert\(1\)&gt;", dom)
    # ?q= pre-filled every table filter: only rows mentioning "mismatch" stay visible
    table = dom.split('id="m0-cases"')[1].split("</table>")[0]
    rows = re.findall(r"<tr( style=\"[^\"]*\")?>(.*?)</tr>", table)[1:]  # skip the header row
    visible = [body for style, body in rows if "display: none" not in style]
    assert 0 < len(visible) < len(rows) == 30
    assert all("mismatch" in body.lower() for body in visible)
    assert re.search(rf'id="m0-cases-count">{len(visible)} of 30 rows<', dom)
    # ?machine= selected the second machine: the first machine's section is hidden
    assert re.search(r'data-machine="ci-box-3f9a1c" data-index="0" style="display: none;"', dom)
    assert re.search(r'data-machine="arm-laptop-77d2e0" data-index="1"(?! style="display: none)', dom)


@pytest.mark.slow
def test_compare_and_trend_pages_render_in_chromium(tmp_path):
    outcome = compare_runs(RUNS / "run-a", RUNS / "run-b", ["p50:10%"], out=tmp_path / "compare.html")
    assert outcome.exit_code == 1
    dom, log = render(tmp_path / "compare.html", tmp_path)
    assert console_errors(log) == []
    assert plotted(dom) == 1
    assert "regression" in dom
    trend = trend_report([RUNS], tmp_path / "trend.html")
    dom, log = render(trend, tmp_path)
    assert console_errors(log) == []
    assert plotted(dom) == trend.read_text().count('class="plotly-graph-div"') == 7
