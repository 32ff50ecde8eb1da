"""Machine facts: CPU model and flags, cores, RAM, OS, package versions, project commit, machine id."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any


@functools.cache
def _cpu_model() -> str:
    """The CPU's model name (read once per process: it does not change under a running process)."""
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
    from harness.core.machine import module_version

    dists = ["torch", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "nncf", "ncnn", "pnnx",
             "tensorrt", "onnxscript", "sentence-transformers"]
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
    env = os.environ.get("HARNESS_MACHINE_ID")
    if env:
        return env
    return socket.gethostname() + "-" + _cpu_digest()


@functools.cache
def _cpu_digest() -> str:
    import hashlib

    return hashlib.sha1(_cpu_model().encode()).hexdigest()[:6]


def module_version(module_name: str) -> str:
    """Installed distribution version of a package, or 'not installed'."""
    from importlib import metadata

    try:
        return metadata.version(module_name)
    except metadata.PackageNotFoundError:
        return "not installed"
