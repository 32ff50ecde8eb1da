"""CI configuration: tox envs, the nightly and PR workflows, and --shard splitting.

The workflows are parsed, not run: every pytest option they (and tox.ini) pass is checked against
the options pytest really has with the harness plugin loaded, and every ``harness`` subcommand
against the real CLI, so a renamed option breaks this test instead of a night of CI.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zlib
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml is in the dev extra: pip install -e '.[dev]'")

ROOT = Path(__file__).resolve().parents[1]
NIGHTLY = ROOT / ".github" / "workflows" / "nightly.yml"
PR = ROOT / ".github" / "workflows" / "pr.yml"
TOX = ROOT / "tox.ini"

ENGINE_ENVS = {"ort": "ort", "ov": "openvino", "ncnn": "ncnn", "trt": "trt"}  # tox env -> pyproject extra
EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def child_env(**extra: str) -> dict[str, str]:
    """This environment minus PYTEST_* (an outer xdist worker's PYTEST_XDIST_WORKER must not leak into the child)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}, **extra}


# ---------------------------------------------------------------------------------------------- helpers


def load_workflow(path: Path) -> dict[str, Any]:
    wf = yaml.safe_load(path.read_text())
    assert isinstance(wf, dict), f"{path} is not a YAML mapping"
    return wf


def triggers(wf: dict[str, Any]) -> dict[str, Any]:
    """The ``on:`` mapping (YAML 1.1 reads a bare ``on`` key as the boolean True)."""
    on = wf.get("on", wf.get(True))
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return dict.fromkeys(on)
    return on or {}


def tox_config() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(TOX)
    return cp


def tox_list(cp: configparser.ConfigParser, env: str, key: str) -> list[str]:
    """A list-valued tox setting of ``testenv:env`` (falling back to ``testenv``), comma/newline separated."""
    section = f"testenv:{env}"
    raw = cp.get(section, key, fallback=None)
    if raw is None:
        raw = cp.get("testenv", key, fallback="")
    sep = r"\n" if key == "commands" else r"[,\n]"  # commands may contain commas
    return [x.strip() for x in re.split(sep, raw) if x.strip()]


def cron_field_ok(field: str, low: int, high: int) -> bool:
    for part in field.split(","):
        base, _, step = part.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            return False
        if base == "*":
            continue
        lo, _, hi = base.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            return False
        if not (low <= int(lo) <= high and (not hi or int(lo) <= int(hi) <= high)):
            return False
    return True


def valid_cron(expr: str) -> bool:
    """POSIX 5-field cron as GitHub Actions accepts it (numbers, *, ranges, lists, steps)."""
    fields = expr.split()
    ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]
    return len(fields) == 5 and all(cron_field_ok(f, lo, hi) for f, (lo, hi) in zip(fields, ranges, strict=True))


def steps_of(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job.get("steps", [])


def uses(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    """Steps of ``job`` that use ``action`` (any version)."""
    return [s for s in steps_of(job) if str(s.get("uses", "")).split("@")[0] == action]


def run_lines(job: dict[str, Any]) -> list[str]:
    return [s["run"] for s in steps_of(job) if "run" in s]


def expand(text: str, matrix_entry: dict[str, Any] | None) -> str:
    """Substitute ``${{ matrix.X }}`` from one matrix entry; drop every other expression."""

    def sub(m: re.Match[str]) -> str:
        ref = m.group(1)
        if matrix_entry is not None and ref.startswith("matrix."):
            value = matrix_entry.get(ref.removeprefix("matrix."), "")
            return " ".join(value) if isinstance(value, list) else str(value)
        return ""

    return EXPR.sub(sub, text)


def commands(text: str) -> list[list[str]]:
    """Shell-ish split of a run block into simple commands (lines, &&, ;, |)."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        for part in re.split(r"&&|;|\|\|?", line):
            try:
                tokens = shlex.split(part, comments=True)
            except ValueError:
                tokens = part.split()
            if tokens:
                out.append(tokens)
    return out


def pytest_args_of(tokens: list[str]) -> list[str] | None:
    """The arguments pytest receives from one command: pytest/python -m pytest, or tox's posargs after --."""
    for i, tok in enumerate(tokens):
        if Path(tok).name in ("pytest", "py.test"):  # also `python -m pytest`
            return tokens[i + 1:]
    if any(Path(t).name == "tox" for t in tokens) and "--" in tokens:
        return tokens[tokens.index("--") + 1:]
    return None


def ci_command_sources() -> list[tuple[str, str]]:
    """(where, command text) for every command CI runs: workflow steps (per matrix entry) and tox commands."""
    sources: list[tuple[str, str]] = []
    for path in (NIGHTLY, PR):
        for job_name, job in load_workflow(path).get("jobs", {}).items():
            entries = job.get("strategy", {}).get("matrix", {}).get("include") or [None]
            for entry in entries:
                label = f"{path.name}:{job_name}" + (f"[{entry.get('name')}]" if entry else "")
                sources += [(label, expand(r, entry)) for r in run_lines(job)]
    cp = tox_config()
    for section in cp.sections():
        if section.startswith("testenv:") and cp.has_option(section, "commands"):
            sources += [(f"tox.ini:{section}", c) for c in tox_list(cp, section.partition(":")[2], "commands")]
    ci_script = ROOT / ".ci" / "run"
    if ci_script.exists():
        sources.append((".ci/run", ci_script.read_text()))
    return sources


def long_options(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-zA-Z0-9][\w-]*)", help_text))


def harness_help(*args: str) -> tuple[int, str]:
    """(exit code, stdout) of ``harness <args> --help``, in-process."""
    import contextlib
    import io

    from harness.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = main([*args, "--help"])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue()


def suites_job(wf: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The matrix job that runs the suites."""
    for name, job in wf["jobs"].items():
        if job.get("strategy", {}).get("matrix", {}).get("include"):
            return name, job
    raise AssertionError("nightly.yml has no matrix job with an include list")


def job_running(wf: dict[str, Any], program: str) -> tuple[str, dict[str, Any]]:
    for name, job in wf["jobs"].items():
        if any(toks[:2] == ["harness", program] for r in run_lines(job) for toks in commands(r)):
            return name, job
    raise AssertionError(f"no job of nightly.yml runs `harness {program}`")


def harness_invocations(text: str, program: str) -> list[list[str]]:
    return [toks for toks in commands(text) if toks[:2] == ["harness", program]]


# ---------------------------------------------------------------------------------------------- tox


def test_tox_defines_an_env_per_engine_plus_unit_cpu_report():
    cp = tox_config()
    envs = {s.partition(":")[2] for s in cp.sections() if s.startswith("testenv:")}
    assert {"unit", "ort", "ov", "ncnn", "trt", "cpu", "report"} <= envs
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for env, extra in {**ENGINE_ENVS, "cpu": "cpu"}.items():
        got = set(tox_list(cp, env, "extras"))
        assert {extra, "dev"} <= got, f"tox env {env} installs extras {got}, wants {extra} and dev"
        assert got <= extras, f"tox env {env}: extras {got - extras} are not in pyproject.toml"
    assert set(tox_list(cp, "unit", "extras")) == {"dev"}, "the unit env must install no engine extra"


def test_tox_pins_torch_before_the_project():
    """Every env installs torch==2.13.0 through deps (installed before the project): never a bare torch."""
    cp = tox_config()
    for env in ("unit", *ENGINE_ENVS, "cpu", "report"):
        deps = tox_list(cp, env, "deps")
        torch = [d for d in deps if re.match(r"(\{env:[A-Z_]+:)?torch\b", d)]
        assert torch, f"tox env {env}: no torch in deps ({deps}); a bare torch requirement pulls a CUDA build"
        assert all("torch==2.13.0" in d for d in torch), f"tox env {env}: torch not pinned to 2.13.0: {torch}"


def test_tox_commands_run_the_matching_backend():
    from harness import backends

    cp = tox_config()
    known = set(backends.names(include_hidden=True))
    expected = {"ort": {"ort"}, "ov": {"ov"}, "ncnn": {"ncnn"}, "trt": {"trt"}, "cpu": {"torch", "ort", "ov", "ncnn"}}
    for env, want in expected.items():
        (cmd,) = [commands(c)[0] for c in tox_list(cp, env, "commands")]
        args = pytest_args_of(cmd)
        assert args, f"tox env {env} runs {cmd}"
        assert args[0].rstrip("/") == "suites", f"tox env {env} runs {cmd}"
        named = {args[i + 1] for i, a in enumerate(args) if a == "--backend"}
        assert named == want, f"tox env {env} runs backends {named}, expected {want}"
        assert named <= known
    (unit,) = [commands(c)[0] for c in tox_list(cp, "unit", "commands")]
    args = pytest_args_of(unit)
    assert args is not None
    assert "{posargs:tests}" in args
    assert "-m" in args
    (report,) = [commands(c)[0] for c in tox_list(cp, "report", "commands")]
    assert report[:2] == ["harness", "report"]
    assert "-o" in report


@pytest.mark.skipif(shutil.which("tox") is None, reason="tox is not installed here (pip install 'tox>=4.11'); "
                                                         "tox.ini is still checked above with configparser")
def test_tox_resolves_the_config(tmp_path):
    proc = subprocess.run(["tox", "--workdir", str(tmp_path), "config", "-e", "unit,ort,ov,ncnn,trt,cpu,report",
                           "-k", "deps", "extras", "commands"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "pytest suites/ --backend trt" in proc.stdout
    assert "harness report results -o site/index.html" in proc.stdout


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def req_name(requirement: str) -> str:
    """The normalized project name of a requirement string (``PyYAML>=6`` -> ``pyyaml``)."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)
    return re.sub(r"[-_.]+", "-", name).lower()


def extra_requirements(extra: str) -> set[str]:
    """Project names an extra installs, following the project's own ``name[other,extras]`` references."""
    project = pyproject()["project"]
    me, found = req_name(project["name"]), set()
    for req in project["optional-dependencies"][extra]:
        if req_name(req) == me:
            inner = re.search(r"\[(.*?)\]", req).group(1)
            for other in inner.split(","):
                found |= extra_requirements(other.strip())
        else:
            found.add(req_name(req))
    return found


def env_list(cp: configparser.ConfigParser) -> list[str]:
    return [e.strip() for e in re.split(r"[,\n]", cp.get("tox", "env_list")) if e.strip()]


def test_every_env_in_env_list_is_defined_and_installs_extras_that_exist():
    """``tox`` (no -e) runs env_list: each env must exist, and every extra it installs must be in pyproject.toml."""
    cp = tox_config()
    extras = set(pyproject()["project"]["optional-dependencies"])
    listed = env_list(cp)
    assert {"unit", "ort", "ov", "ncnn", "cpu"} <= set(listed), listed
    for env in listed:
        assert cp.has_section(f"testenv:{env}"), f"env_list names {env}, which tox.ini does not define"
        wanted = tox_list(cp, env, "extras")
        assert wanted, f"tox env {env} installs no extra"
        missing = set(wanted) - extras
        assert not missing, f"tox env {env} installs extras {sorted(missing)}, not in pyproject.toml ({sorted(extras)})"


def test_every_engine_env_installs_what_its_export_path_needs():
    """An env installs one engine's extra on its own: the extra must bring torch's ONNX exporters' dependencies when
    that engine reads ONNX (onnx for the TorchScript exporter, onnxscript for the dynamo one some models declare)."""
    from harness import backends

    cp = tox_config()
    checked = 0
    for env in [s.partition(":")[2] for s in cp.sections() if s.startswith("testenv:")]:
        args = next((pytest_args_of(commands(c)[0]) for c in tox_list(cp, env, "commands")), None) or []
        named = [args[i + 1] for i, a in enumerate(args) if a == "--backend"]
        installed = set().union(*(extra_requirements(x) for x in tox_list(cp, env, "extras")))
        for name in named:
            if backends.get(name)().needs_onnx:
                missing = {"onnx", "onnxscript"} - installed
                assert not missing, f"tox env {env} runs --backend {name} (reads ONNX) without {sorted(missing)}"
                checked += 1
    assert checked >= 4, "expected the ort, ov, trt and cpu envs to run ONNX-reading backends"


ENGINE_MODULES = {"ort": ("onnxruntime.py", "_ort_quant.py"), "openvino": ("openvino.py", "_ov_audit.py"),
                  "ncnn": ("ncnn.py", "_ncnn_tools.py"), "trt": ("tensorrt.py", "_trt_tools.py")}
"""pyproject extra -> the harness/backends modules of its engine."""


def required_imports(path: Path) -> set[str]:
    """Top-level modules a file imports anywhere (module level or inside functions), except in a ``try`` whose
    handler names ImportError (an optional import: a broad ``except Exception`` is a fallback for failures of
    the call, not a declaration that the package may be missing) and ``if TYPE_CHECKING:`` blocks."""
    import ast

    found: set[str] = set()

    def visit(node: ast.AST, optional: bool) -> None:
        if isinstance(node, ast.Try):
            catches = any(h.type is None or re.search(r"\b(ImportError|ModuleNotFoundError)\b",
                                                      ast.unparse(h.type)) for h in node.handlers)
            for child in node.body:
                visit(child, optional or catches)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, optional)
            return
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if not optional and isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif not optional and isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child, optional)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def test_each_engine_extra_brings_what_its_backend_imports():
    """``pip install -e '.[ENGINE]'`` alone must be enough for that engine's backend code: every package it imports
    (lazily, inside functions too) is a base dependency or in the extra, unless its ImportError is handled."""
    from importlib.metadata import packages_distributions

    project = pyproject()["project"]
    base = {req_name(r) for r in project["dependencies"]}
    dists = {mod: {req_name(d) for d in names} for mod, names in packages_distributions().items()}
    ignore = {"harness", "model_zoo", "__future__", *sys.stdlib_module_names}
    problems = []
    for extra, files in ENGINE_MODULES.items():
        provided = base | extra_requirements(extra)
        for file in files:
            for mod in sorted(required_imports(ROOT / "harness" / "backends" / file) - ignore):
                owners = dists.get(mod) or {req_name(mod)}  # not installed here: assume the project is named so
                if not owners & provided:
                    problems.append(f"harness/backends/{file} imports {mod} ({sorted(owners)}), not in extra {extra!r}"
                                    " nor the base dependencies")
    assert problems == []


def _module_level_imports(path: Path) -> tuple[set[str], list[str]]:
    """Top-level modules a file imports at module level without an importorskip of them before, and its
    module-level importorskip calls that give no reason."""
    import ast

    tree = ast.parse(path.read_text(), str(path))
    found, guarded, unexplained = set(), set(), []
    for node in tree.body:  # module level only: imports inside functions or try blocks are the test's own business
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names} - guarded
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module.split(".")[0]} - guarded
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for call in ast.walk(node):
            if isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "importorskip":
                if call.args and isinstance(call.args[0], ast.Constant):
                    guarded.add(str(call.args[0].value).split(".")[0])  # the module skips before importing it
                if not any(k.arg == "reason" for k in call.keywords):
                    unexplained.append(f"{path.name}:{call.lineno}")
    return found, unexplained


def test_the_dev_extra_has_what_the_tests_import():
    """``pip install -e '.[dev]'`` (tox -e unit: no engine) must be enough to collect every test module: what a
    test module imports unconditionally is in the base dependencies or the dev extra; an engine is importorskip'd
    with a reason, so the module skips saying what is missing."""
    from importlib.metadata import packages_distributions

    project = pyproject()["project"]
    provided = {req_name(r) for r in project["dependencies"]} | extra_requirements("dev")
    dists = {mod: {req_name(d) for d in names} for mod, names in packages_distributions().items()}
    first_party = {"harness", "model_zoo", "tests", "conftest", "__future__"}
    first_party |= {p.stem for p in (ROOT / "tests").glob("*.py")}  # local helpers: tests/engines.py
    problems, unexplained = [], []
    for path in sorted((ROOT / "tests").glob("*.py")):
        modules, no_reason = _module_level_imports(path)
        unexplained += no_reason
        for mod in sorted(modules - first_party - set(sys.stdlib_module_names)):
            owners = dists.get(mod)
            if not owners:
                problems.append(f"{path.name}: imports {mod}, which no installed distribution provides")
            elif not owners & provided:
                problems.append(f"{path.name}: imports {mod} (from {sorted(owners)}) at module level; it is in "
                                "neither the base dependencies nor the dev extra: add it there or importorskip it")
    assert problems == []
    assert unexplained == [], "module-level pytest.importorskip without reason= (a skip must say why)"


# ---------------------------------------------------------------------------------------------- nightly


def test_nightly_runs_on_a_schedule_and_by_hand():
    on = triggers(load_workflow(NIGHTLY))
    assert "workflow_dispatch" in on
    crons = [entry["cron"] for entry in on["schedule"]]
    assert crons
    assert all(valid_cron(c) for c in crons), crons
    _minute, _hour, dom, month, dow = crons[0].split()
    assert (dom, month, dow) == ("*", "*", "*"), f"nightly means every day, got {crons[0]!r}"


def test_nightly_matrix_has_hosted_cpu_engines_and_trt_on_the_self_hosted_gpu_runner():
    _, job = suites_job(load_workflow(NIGHTLY))
    assert job["runs-on"] == "${{ matrix.runner }}"
    assert job["strategy"].get("fail-fast") is False, "one engine's failure must not cancel the others"
    include = job["strategy"]["matrix"]["include"]
    by_env: dict[str, list[dict[str, Any]]] = {}
    for entry in include:
        by_env.setdefault(entry["tox_env"], []).append(entry)
    assert {"ort", "ov", "ncnn", "trt"} <= set(by_env)
    for env in ("ort", "ov", "ncnn"):
        assert all(str(e["runner"]).startswith("ubuntu-") for e in by_env[env]), by_env[env]
    for entry in by_env["trt"]:
        assert isinstance(entry["runner"], list), entry
        assert {"self-hosted", "linux", "gpu"} <= set(entry["runner"]), entry
    cp = tox_config()
    for env in by_env:
        assert cp.has_section(f"testenv:{env}"), f"matrix tox_env {env} is not a tox env"
    names = [e["name"] for e in include]
    assert len(names) == len(set(names)), "matrix names must be unique: they name the run ids and artifacts"


def test_nightly_splits_one_backend_with_complete_shards():
    _, job = suites_job(load_workflow(NIGHTLY))
    shards: dict[str, list[tuple[int, int]]] = {}
    for entry in job["strategy"]["matrix"]["include"]:
        m = re.search(r"--shard\s+(\d+)/(\d+)", str(entry.get("pytest_args", "")))
        if m:
            shards.setdefault(entry["tox_env"], []).append((int(m.group(1)), int(m.group(2))))
    assert shards, "no matrix entry uses --shard"
    for env, parts in shards.items():
        (n,) = {n for _, n in parts}
        assert n >= 2
        assert sorted(i for i, _ in parts) == list(range(1, n + 1)), f"{env}: shards {parts} of {n}"


def test_nightly_suite_jobs_write_unique_runs_and_upload_them():
    _, job = suites_job(load_workflow(NIGHTLY))
    for entry in job["strategy"]["matrix"]["include"]:
        args = next(pytest_args_of(t) for r in run_lines(job) for t in commands(expand(r, entry))
                    if pytest_args_of(t) is not None)
        assert args[args.index("--results-dir") + 1] == "results"
        run_id = args[args.index("--run-id") + 1]
        assert entry["name"] in run_id, f"run id {run_id!r} must be unique per matrix job (artifacts are merged)"
    (upload,) = uses(job, "actions/upload-artifact")
    assert "${{ matrix.name }}" in upload["with"]["name"]
    assert "results/" in upload["with"]["path"]
    assert "!cancelled()" in str(upload.get("if", "")) or "always()" in str(upload.get("if", "")), \
        "results must be uploaded even when a case failed"


def test_nightly_report_job_builds_the_site_compares_and_publishes():
    wf = load_workflow(NIGHTLY)
    suites_name, _ = suites_job(wf)
    name, job = job_running(wf, "site")
    needs = job.get("needs")
    assert suites_name in ([needs] if isinstance(needs, str) else needs)
    (download,) = uses(job, "actions/download-artifact")
    assert download["with"].get("merge-multiple") is True
    assert download["with"]["pattern"] == "results-*"
    nights, _, tonight = download["with"]["path"].partition("/")  # nights/${{ env.NIGHT }}
    assert tonight, "tonight's runs must go into a night directory under the nights directory"

    text = "\n".join(run_lines(job))
    (site,) = harness_invocations(text, "site")
    assert site[2] == nights
    assert site[site.index("-o") + 1] == "site"
    (compare,) = harness_invocations(text, "compare")
    fail_on = [compare[i + 1] for i, t in enumerate(compare) if t == "--fail-on"]
    assert fail_on[0] == "p50:10%"
    assert {"missing", "unmeasured", "status"} <= set(fail_on)
    assert fail_on == [site[i + 1] for i, t in enumerate(site) if t == "--fail-on"], "site and gate must agree"
    positional = [t for i, t in enumerate(compare[2:], 2) if not t.startswith("-") and compare[i - 1] != "--fail-on"]
    assert [p.split("/")[0] for p in positional] == [nights, nights]
    assert positional[1] == f"{nights}/$NIGHT"

    # previous nights: restored from and saved to the Actions cache under one path and key prefix
    (restore,) = uses(job, "actions/cache/restore")
    (save,) = uses(job, "actions/cache/save")
    assert restore["with"]["path"] == save["with"]["path"] == nights
    prefix = restore["with"]["restore-keys"].strip()
    assert save["with"]["key"].startswith(prefix)
    assert restore["with"]["key"] == save["with"]["key"]
    steps = steps_of(job)
    assert steps.index(restore) < steps.index(download) < steps.index(save), \
        "restore the previous nights, add tonight, then save"

    (pages,) = uses(job, "actions/upload-pages-artifact")
    assert pages["with"]["path"] == "site"
    deploy = [j for j in wf["jobs"].values() if uses(j, "actions/deploy-pages")]
    assert len(deploy) == 1
    assert name in ([deploy[0]["needs"]] if isinstance(deploy[0]["needs"], str) else deploy[0]["needs"])
    assert deploy[0]["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy[0]["environment"]["name"] == "github-pages"



def test_nightly_regression_fails_the_workflow_after_publishing():
    wf = load_workflow(NIGHTLY)
    name, job = job_running(wf, "compare")
    (step,) = [s for s in steps_of(job) if harness_invocations(s.get("run", ""), "compare")]
    output = next(k for k, v in job["outputs"].items() if f"steps.{step['id']}.outputs" in v)
    gates = [j for j in wf["jobs"].values() if f"needs.{name}.outputs.{output}" in json.dumps(j)]
    assert gates, "nothing fails the workflow when harness compare reports a regression"
    assert any("exit 1" in r for g in gates for r in run_lines(g))


# ---------------------------------------------------------------------------------------------- PR


def test_pr_workflow_runs_the_ci_script():
    wf = load_workflow(PR)
    assert "pull_request" in triggers(wf)
    runs = [r for job in wf["jobs"].values() for r in run_lines(job)]
    assert any(toks == ["bash", ".ci/run"] for r in runs for toks in commands(r)), runs
    assert (ROOT / ".ci" / "run").is_file(), ".github/workflows/pr.yml runs bash .ci/run, which does not exist"
    # .ci/run installs torch==2.13.0 itself: on hosted runners pip must find the CPU wheel, not PyPI's CUDA build
    assert "torch==2.13.0" in (ROOT / ".ci" / "run").read_text()
    assert "/whl/cpu" in wf["env"]["PIP_EXTRA_INDEX_URL"]


# ---------------------------------------------------------------------------------------------- pytest itself

# One child process answers everything this module asks pytest (with the harness plugin loaded from the
# repository's conftest): --help, --markers, and the suites' ci collection unsharded and in three shards.
PROBE = r"""
import contextlib, io, json, sys
import pytest

class Collector:
    ids = None

    def pytest_collection_finish(self, session):
        self.ids = [item.nodeid for item in session.items]

out = {}
for flag in ("--help", "--markers"):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = pytest.main([flag, "-p", "no:cacheprovider"])
    out[flag] = {"code": int(code), "text": buf.getvalue()}
for spec in ("", "1/3", "2/3", "3/3"):
    c = Collector()
    args = ["suites", "--collect-only", "-q", "--tag", "ci", "-p", "no:cacheprovider", "--results-dir", sys.argv[1]]
    with contextlib.redirect_stdout(io.StringIO()):
        code = pytest.main(args + (["--shard", spec] if spec else []), plugins=[c])
    out[spec] = {"code": int(code), "ids": c.ids}
print("PROBE=" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    results = tmp_path_factory.mktemp("collect-results")
    proc = subprocess.run([sys.executable, "-c", PROBE, str(results)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=child_env())
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE=")), None)
    assert line is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = json.loads(line.removeprefix("PROBE="))
    assert got["--help"]["code"] == 0, got["--help"]["text"][-2000:]
    assert got["--markers"]["code"] == 0, got["--markers"]["text"][-2000:]
    return {**got, "results": results}


def test_every_pytest_option_ci_passes_exists(probe):
    known = long_options(probe["--help"]["text"])
    assert {"--backend", "--shard", "--results-dir", "--run-id"} <= known, "the harness plugin is not loaded"
    checked = 0
    for where, text in ci_command_sources():
        for toks in commands(text):
            args = pytest_args_of(toks)
            if args is None:
                continue
            for arg in args:
                opt = arg.split("=", 1)[0]
                if opt.startswith("--") and opt != "--":
                    assert opt in known, f"{where}: `{' '.join(toks)}` passes {opt}, which pytest does not define"
                    checked += 1
    assert checked >= 10, f"only {checked} options found: the command parser missed the CI commands"


def test_tox_unit_deselects_registered_markers(probe):
    """`-m "not browser"` selects by marker names: pytest refuses unregistered ones under --strict-markers."""
    (unit,) = [commands(c)[0] for c in tox_list(tox_config(), "unit", "commands")]
    args = pytest_args_of(unit)
    expression = args[args.index("-m") + 1]
    for name in set(re.findall(r"[a-z_]+", expression)) - {"not", "and", "or"}:
        assert f"@pytest.mark.{name}:" in probe["--markers"]["text"], \
            f"tox env unit deselects marker {name!r}, which is not registered in pyproject.toml"


def test_every_tox_env_ci_runs_exists():
    envs = {s.partition(":")[2] for s in tox_config().sections() if s.startswith("testenv:")}
    called = [(where, toks[toks.index("-e") + 1]) for where, text in ci_command_sources() for toks in commands(text)
              if any(Path(t).name == "tox" for t in toks) and "-e" in toks]
    assert called, "no CI command runs tox"
    for where, env in called:
        assert env in envs, f"{where}: tox -e {env} is not defined in tox.ini"


def test_every_harness_subcommand_ci_runs_exists():
    if importlib.util.find_spec("harness.cli") is None:
        pytest.skip("harness/cli.py is not written yet: cannot check `harness report`/`harness compare`")
    code, top = harness_help()
    assert code == 0, top
    used = [(where, toks) for where, text in ci_command_sources() for toks in commands(text) if toks[0] == "harness"]
    assert {toks[1] for _, toks in used} >= {"report", "compare"}
    for where, toks in used:
        assert re.search(rf"\b{toks[1]}\b", top), f"{where}: `harness {toks[1]}` is not a subcommand"
        code, sub = harness_help(toks[1])
        assert code == 0, sub
        for opt in (t.split("=", 1)[0] for t in toks[2:] if t.startswith("-")):
            assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", sub), \
                f"{where}: `harness {toks[1]}` has no option {opt}"


# ---------------------------------------------------------------------------------------------- sharding


def test_shards_partition_the_collection(probe):
    assert all(probe[s]["code"] == 0 for s in ("", "1/3", "2/3", "3/3"))
    full = probe[""]["ids"]
    assert len(full) == len(set(full)) >= 15
    parts = [set(probe[s]["ids"]) for s in ("1/3", "2/3", "3/3")]
    assert all(parts), "a shard of the ci collection is empty"
    assert set().union(*parts) == set(full)
    assert sum(len(p) for p in parts) == len(full), "shards overlap"


def test_shard_assignment_is_a_stable_hash_of_the_test_id(probe):
    """crc32 of the node id, not hash(): the same split in every process, job and night."""
    for i in (1, 2, 3):
        ids = probe[f"{i}/3"]["ids"]
        assert ids
        assert all(zlib.crc32(nodeid.encode()) % 3 == i - 1 for nodeid in ids), f"shard {i}/3"


def test_collect_only_writes_no_run_directory(probe):
    """Collecting (CI's shard planning, --collect-only) runs nothing and must leave no empty run behind."""
    leftovers = sorted(p.name for p in probe["results"].iterdir())
    assert leftovers == [], f"--collect-only wrote run directories: {leftovers}"
