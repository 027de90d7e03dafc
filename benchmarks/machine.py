"""What machine the benchmark ran on, and whether it is fit to measure right now."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import psutil

__all__ = ["busy_warning", "describe", "git_state", "load_average"]

# A 1-minute load average above this share of the cores means someone else is busy.
BUSY_LOAD_PER_CORE = 0.5


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def busy_warning() -> str | None:
    """A warning when the machine is not idle enough for quiet measurements."""
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if load > BUSY_LOAD_PER_CORE * cores:
        return (
            f"the machine is busy (1-minute load average {load:.2f} on {cores} cores): "
            "figures will be noisy; measure on an idle machine for numbers to publish"
        )
    return None


def git_state(repo: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def describe() -> dict[str, Any]:
    """The machine: CPU, cores, memory, kernel, OS, runner's Python."""
    memory = psutil.virtual_memory()
    os_release = _read("/etc/os-release") or ""
    pretty = next(
        (
            line.split("=", 1)[1].strip('"')
            for line in os_release.splitlines()
            if line.startswith("PRETTY_NAME=")
        ),
        platform.platform(),
    )
    return {
        "cpu_model": _cpu_model(),
        "logical_cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "memory_gib": round(memory.total / 2**30, 1),
        "kernel": platform.release(),
        "os": pretty,
        "hostname": platform.node(),
        "runner_python": platform.python_version(),
        "load_average": load_average(),
    }
