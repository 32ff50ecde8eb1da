"""The nightly site and its rehearsal (scripts/nightly_rehearsal.sh): two nights, two machines, the
comparison failing on a planted regression, one shared plotly.js; the rehearsal's commands are the
workflow's."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.report.site import PLOTLY_FILE, build_site, slug

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "nightly_rehearsal.sh"
NIGHTLY = ROOT / ".github" / "workflows" / "nightly.yml"
RUNS = Path(__file__).parent / "data" / "runs"
BUNDLE_HEAD = "plotly.js v"  # the banner at the top of the library: in plotly.min.js only


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return {**env, "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")}


def rehearse(out: Path, *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT), "--out", str(out), *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, time.monotonic() - start


def tree(site: Path) -> list[str]:
    return sorted(str(p.relative_to(site)) for p in site.rglob("*") if p.is_file())


def check_site(site: Path, machines: set[str]) -> dict:
    """Two nights, the given machines, one plotly.js that every figure page references, none embedded."""
    index = json.loads((site / "site.json").read_text())
    nights = index["nights"]
    assert len(nights) == 2
    newest, first = nights
    assert set(newest["machines"]) | set(first["machines"]) == machines
    assert first["compare"] == {}
    assert newest["compare"]["baseline"] == first["name"]
    files = tree(site)
    expected = {"index.html", "site.json", "trend.html", PLOTLY_FILE}
    for n in nights:
        expected.add(f"nights/{n['slug']}/report.html")
    expected |= {f"nights/{newest['slug']}/compare.html", f"nights/{newest['slug']}/compare.txt"}
    assert expected <= set(files), files
    pages = [site / f for f in files if f.endswith(".html")]
    assert BUNDLE_HEAD in (site / PLOTLY_FILE).read_text()[:200]
    for page in pages:
        html = page.read_text()
        assert BUNDLE_HEAD not in html, f"{page} embeds plotly.js"
        for src in re.findall(r'<script[^>]*\ssrc="([^"]+)"', html):
            assert (page.parent / src).resolve() == (site / PLOTLY_FILE).resolve(), (page, src)
        assert page.stat().st_size < 1_000_000
    figures = [p for p in pages if 'class="plotly-graph-div"' in p.read_text()]
    assert figures
    assert all('src="' in p.read_text() for p in figures)
    assert "<script src=" not in (site / "index.html").read_text()  # no figure: no library to load
    index_html = (site / "index.html").read_text()
    for m in machines:
        assert f"?machine={m}" in index_html
    return index


def test_rehearsal_on_fixture_runs(tmp_path):
    _proc, seconds = rehearse(tmp_path / "rehearsal", "--fixtures")
    out = tmp_path / "rehearsal"
    index = check_site(out / "site", {"ci-box-3f9a1c", "arm-laptop-77d2e0"})
    assert (out / "compare_exit").read_text().strip() == "1"
    assert index["nights"][0]["compare"]["exit_code"] == 1  # the site's own comparison agrees
    text = (out / "site" / "compare.txt").read_text()
    assert "engine (1):" in text
    assert re.search(r"REGRESSION \S+ \S+ \S+ \[\w+\] @ci-box-3f9a1c: verdict pass -> mismatch: planted by scripts/"
                     r"nightly_rehearsal.sh", text)
    assert "FAIL (exit 1): regression" in text
    assert (out / "cache" / "nights").is_dir()
    assert len(list((out / "cache" / "nights").iterdir())) == 2
    assert "total:" in (out / "timings.txt").read_text()
    assert seconds < 100


def test_site_keeps_the_newest_nights_and_removes_stale_pages(tmp_path):
    nights = tmp_path / "nights"
    for name, runs in (("2025-01-01", ["run-a"]), ("2025-01-02", ["run-b"]), ("2025-01-03", ["run-c"])):
        for run in runs:
            shutil.copytree(RUNS / run, nights / name / run)
    site = tmp_path / "site"
    build_site(nights, site, keep=0)
    assert len(json.loads((site / "site.json").read_text())["nights"]) == 3
    build_site(nights, site, keep=2)
    data = json.loads((site / "site.json").read_text())
    assert [n["name"] for n in data["nights"]] == ["2025-01-03", "2025-01-02"]
    assert not (site / "nights" / "2025-01-01").exists()
    # 2025-01-03 ran only on the arm laptop: nothing in common with 2025-01-02's machine
    assert data["nights"][0]["compare"]["exit_code"] == 2


def test_site_refuses_a_foreign_directory_and_names_pages_safely(tmp_path):
    from harness.report.page import OutputPathError

    nights = tmp_path / "nights"
    shutil.copytree(RUNS / "run-c", nights / "night <b>one" / "run-c")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(OutputPathError, match="not a site written by `harness site`"):
        build_site(nights, mine)
    assert (mine / "notes.txt").read_text() == "keep me"
    assert len(list(mine.iterdir())) == 1
    build_site(nights, tmp_path / "site")
    (night,) = (tmp_path / "site" / "nights").iterdir()
    assert re.fullmatch(r"night-b-one-[0-9a-f]{8}", night.name)
    index = (tmp_path / "site" / "index.html").read_text()
    assert "<b>one" not in index
    assert "night &lt;b&gt;one" in index
    assert "/" not in slug("../../x")
    assert not slug("..").startswith(".")
    assert slug("2025-01-02-123-1") == "2025-01-02-123-1"


def _harness_commands(text: str, program: str) -> list[list[str]]:
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        for part in re.split(r"&&|;|\|\|?", line):
            try:
                tokens = shlex.split(part, comments=True)
            except ValueError:
                continue
            if "harness" in tokens and tokens[tokens.index("harness") + 1:][:1] == [program]:
                out.append(tokens[tokens.index("harness"):])
    return out


def _options(tokens: list[str]) -> list[str]:
    """Options with their values; positional paths (which differ between CI and the rehearsal) dropped."""
    opts, i = [], 2
    while i < len(tokens):
        if tokens[i].startswith("-"):
            opts.append(tokens[i])
            if i + 1 < len(tokens) and not tokens[i + 1].startswith("-"):
                opts.append(tokens[i + 1])
                i += 1
        i += 1
    return opts


def test_rehearsal_runs_the_workflow_commands():
    yaml = pytest.importorskip("yaml", reason="pyyaml is in the dev extra: pip install -e '.[dev]'")
    wf = yaml.safe_load(NIGHTLY.read_text())
    workflow = "\n".join(s["run"] for job in wf["jobs"].values() for s in job.get("steps", []) if "run" in s)
    script = SCRIPT.read_text()
    for program in ("site", "compare"):
        (ci,) = _harness_commands(workflow, program)
        (rehearsal,) = _harness_commands(script, program)
        assert _options(ci) == _options(rehearsal), (program, ci, rehearsal)
    suites = next(s["run"] for s in wf["jobs"]["suites"]["steps"] if "tox -e" in s.get("run", ""))
    ci_opts = [t for t in shlex.split(suites.replace("${{", "{").replace("}}", "}")) if t.startswith("--")]
    for opt in ("--results-dir", "--run-id", "--no-report"):
        assert opt in ci_opts
        assert opt in script
    assert '-m "not slow"' in suites
    assert '-m "not slow"' in script


@pytest.mark.slow
def test_rehearsal_on_the_ci_models(tmp_path):
    """The real thing: two nights of `pytest suites/ --tag ci --backend ort --precision fp32` in two shards with
    two machine ids (about 5 minutes on a quiet 2-core machine), the site, and night 2's planted mismatch."""
    pytest.importorskip("onnxruntime", reason="the rehearsal runs the ort matrix entries of nightly.yml")
    _proc, seconds = rehearse(tmp_path / "rehearsal", timeout=3600)
    out = tmp_path / "rehearsal"
    check_site(out / "site", {"rehearsal-a", "rehearsal-b"})
    assert (out / "compare_exit").read_text().strip() == "1", (out / "site" / "compare.txt").read_text()[-3000:]
    text = (out / "site" / "compare.txt").read_text()
    assert re.search(r"REGRESSION .* @rehearsal-[ab]: verdict pass -> mismatch: planted by", text)
    timings = (out / "timings.txt").read_text()
    sys.stdout.write(f"\nrehearsal took {seconds:.0f} s:\n{timings}\n" + "\n".join(tree(out / "site")) + "\n")
