"""Records and the append-only, crash-safe result store.

One JSON line per finished case in ``<results-dir>/<run-id>/records.jsonl``:
each line is written with one ``write`` on an ``O_APPEND`` descriptor under an
exclusive ``flock`` and ``fsync``-ed, so concurrent writers (xdist workers,
case subprocesses) never interleave, and a killed session loses at most the
line being written, which readers skip. Earlier lines are never rewritten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import platform
import socket
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Record:
    """The outcome of one case (model x backend x precision in one suite)."""

    run_id: str
    model: str
    backend: str
    precision: str
    status: str
    suite: str = "conformance"
    reason: str = ""
    executed_precision: str = ""
    precision_match: str = ""  # exact | partial | fallback | "" (not built)
    metrics: dict[str, float] = field(default_factory=dict)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    input_sets: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    backend_version: str = ""
    artifact: str | None = None
    artifact_mb: float | None = None
    export: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    latency: dict[str, Any] | None = None
    throughput: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_mb: float | None = None
    accuracy: float | None = None
    known_failure: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    test_id: str = ""
    machine_id: str = ""
    started_at: float = 0.0
    duration_s: float = 0.0
    schema: int = SCHEMA_VERSION

    @property
    def case_id(self) -> str:
        """``model-backend-precision``, the pytest id of the case."""
        return f"{self.model}-{self.backend}-{self.precision}"

    def to_json(self) -> str:
        """One JSON line (non-finite floats become strings so the line stays valid JSON)."""
        return json.dumps(_jsonable(dataclasses.asdict(self)), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        """Build from a parsed line; unknown keys (newer schema) go to ``extra``."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        unknown = {k: v for k, v in data.items() if k not in names}
        if unknown:
            known["extra"] = {**known.get("extra", {}), **unknown}
        return cls(**known)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    return value


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a short random suffix."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


class ResultStore:
    """The records and metadata of one run under ``<results_dir>/<run_id>/``."""

    def __init__(self, results_dir: str | Path, run_id: str | None = None) -> None:
        self.run_id = run_id or new_run_id()
        self.dir = Path(results_dir) / self.run_id
        self.records_path = self.dir / "records.jsonl"

    def prepare(self) -> ResultStore:
        """Create the run directory and prove it is writable; raise OSError with a clear message if not."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".write-probe-{os.getpid()}"
            probe.write_bytes(b"x" * 4096)
            os.fsync(os.open(probe, os.O_RDONLY))
            probe.unlink()
        except OSError as exc:
            raise OSError(exc.errno, f"results directory {self.dir} is not writable: {exc.strerror}. "
                          "Pass --results-dir to a writable directory with free space.") from exc
        return self

    def append(self, record: Record) -> None:
        """Append one record durably (one write, flock, fsync)."""
        line = (record.to_json() + "\n").encode()
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.records_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def records(self) -> list[Record]:
        """Every readable record of this run."""
        return read_records(self.records_path)

    def write_run_info(self, **extra: Any) -> Path:
        """Write (atomically replace) ``run.json``: run id, machine fingerprint and ``extra``."""
        path = self.dir / "run.json"
        info: dict[str, Any] = {}
        if path.exists():
            with contextlib.suppress(ValueError):
                info = json.loads(path.read_text())
        info.update({"run_id": self.run_id, "schema": SCHEMA_VERSION, **extra})
        info.setdefault("machine", machine_fingerprint())
        tmp = path.with_name(f".run.json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(_jsonable(info), indent=2, sort_keys=True))
        os.replace(tmp, path)
        return path


def read_records(path: str | Path) -> list[Record]:
    """Parse a records.jsonl; a line cut short by a crash is skipped with a warning."""
    path = Path(path)
    if path.is_dir():
        path = path / "records.jsonl"
    out: list[Record] = []
    if not path.exists():
        return out
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(Record.from_dict(json.loads(line)))
        except (ValueError, TypeError) as exc:
            warnings.warn(f"{path}:{number}: unreadable record skipped ({exc})", RuntimeWarning, stacklevel=2)
    return out


def iter_run_dirs(paths: list[str | Path]) -> Iterator[Path]:
    """Run directories under the given paths (a run dir itself, or a results dir holding runs)."""
    for p in map(Path, paths):
        if (p / "records.jsonl").exists() or (p / "run.json").exists():
            yield p
        elif p.is_dir():
            yield from sorted(d for d in p.iterdir() if (d / "records.jsonl").exists())


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD features that decide which kernels engines pick (avx2, avx512*, f16c, fma, amx, vnni)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                keep = ("avx", "fma", "f16c", "amx", "vnni", "sse4_2", "neon", "asimd")
                return sorted(f for f in flags if f.startswith(keep))
    return []


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def engine_versions() -> dict[str, str]:
    """Installed versions of torch and every engine's Python package (no SDK import)."""
    from harness.backends.base import module_version

    dists = ["torch", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "nncf", "ncnn", "pnnx",
             "tensorrt", "onnxconverter-common", "onnxsim"]
    return {d: v for d in dists if (v := module_version(d)) != "not installed"}


def machine_fingerprint() -> dict[str, Any]:
    """CPU, cores, RAM, OS, Python, engine versions and project commit of this machine."""
    mem_gb = None
    with contextlib.suppress(OSError, ValueError):
        kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
        mem_gb = round(kb / 1024 / 1024, 1)
    cpu = _cpu_model()
    host = socket.gethostname()
    return {
        "machine_id": machine_id(),
        "hostname": host,
        "cpu": cpu,
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "ram_gb": mem_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": engine_versions(),
        "git_commit": _git_commit(),
    }


def machine_id() -> str:
    """A short stable id of this machine: ``HARNESS_MACHINE_ID`` or hostname + CPU model."""
    import hashlib

    env = os.environ.get("HARNESS_MACHINE_ID")
    if env:
        return env
    return socket.gethostname() + "-" + hashlib.sha1(_cpu_model().encode()).hexdigest()[:6]
