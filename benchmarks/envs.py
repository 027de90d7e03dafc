"""One virtual environment per contestant under `benchmarks/.envs/`, created on demand.

Each contestant's worker and client run with their own interpreter, so no contestant
ever imports another (the Celery environment has no celeriac, and the other way round).
An environment is rebuilt only when what it should hold changes: a marker file records
the requirement list (and, for celeriac, a hash of `pyproject.toml`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ENVS_DIR", "REPO_ROOT", "EnvSpec", "Environment", "ensure", "spec_for"]

REPO_ROOT = Path(__file__).resolve().parent.parent
ENVS_DIR = REPO_ROOT / "benchmarks" / ".envs"
_MARKER = ".bench-requirements"

# Pinned so that a rerun measures the same code. Celery 5.7's `[redis]` extra brings
# redis-py; its AMQP transport is kombu's pure-Python `pyamqp` (the `amqp` package,
# a kombu dependency), never librabbitmq. gevent is there for Celery's `-P gevent` (S4).
_REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "celery": ("celery[redis]==5.7.0", "gevent==26.9.0"),
    "dramatiq": ("dramatiq[redis,rabbitmq]==2.2.1",),
    "huey": ("huey==3.5.4", "redis==8.1.0"),
}
# Distributions whose versions go into the results.
_REPORTED: dict[str, tuple[str, ...]] = {
    "celeriac": ("celeriac", "redis", "hiredis", "amqp", "orjson"),
    "celery": ("celery", "kombu", "billiard", "redis", "amqp", "gevent"),
    "dramatiq": ("dramatiq", "redis", "pika"),
    "huey": ("huey", "redis"),
}


@dataclass(frozen=True, slots=True)
class EnvSpec:
    """What one contestant's environment holds."""

    name: str
    requirements: tuple[str, ...]
    editable: bool = False

    @property
    def marker(self) -> str:
        extra = ""
        if self.name == "celeriac":
            pyproject = (REPO_ROOT / "pyproject.toml").read_bytes()
            extra = hashlib.sha256(pyproject).hexdigest()
        return json.dumps({"requirements": self.requirements, "pyproject": extra})


@dataclass(frozen=True, slots=True)
class Environment:
    """A ready environment: its interpreter and the versions installed in it."""

    name: str
    path: Path
    python: Path
    python_version: str
    versions: dict[str, str]

    def executable(self, script: str) -> Path:
        """A console script installed in this environment (`celery`, `dramatiq`...)."""
        return self.path / "bin" / script


def spec_for(name: str) -> EnvSpec:
    """The environment spec of contestant `name`."""
    if name == "celeriac":
        # Editable, so the lead's changes to src/ are measured without reinstalling.
        return EnvSpec("celeriac", (f"{REPO_ROOT}[redis,amqp,gevent]",), editable=True)
    return EnvSpec(name, _REQUIREMENTS[name])


def ensure(spec: EnvSpec, *, python: str, reinstall: bool = False, log: bool = True) -> Environment:
    """Create or refresh the environment of `spec`, and describe it."""
    path = ENVS_DIR / spec.name
    interpreter = path / "bin" / "python"
    marker_file = path / _MARKER
    current = marker_file.read_text() if marker_file.exists() else None
    if reinstall or current != spec.marker or not interpreter.exists():
        if path.exists():
            shutil.rmtree(path)
        if log:
            print(f"[setup] creating {path.relative_to(REPO_ROOT)} ({python})", flush=True)
        subprocess.run([python, "-m", "venv", str(path)], check=True)
        _pip(interpreter, "install", "-q", "--upgrade", "pip")
        if spec.editable:
            args = [arg for req in spec.requirements for arg in ("-e", req)]
        else:
            args = list(spec.requirements)
        if log:
            print(f"[setup] installing {' '.join(spec.requirements)}", flush=True)
        _pip(interpreter, "install", "-q", *args)
        marker_file.write_text(spec.marker)
    return Environment(
        name=spec.name,
        path=path,
        python=interpreter,
        python_version=_python_version(interpreter),
        versions=_versions(interpreter, _REPORTED[spec.name]),
    )


def _pip(interpreter: Path, *args: str) -> None:
    result = subprocess.run(
        [str(interpreter), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise RuntimeError(f"pip {' '.join(args)} failed in {interpreter.parent.parent}")


def _python_version(interpreter: Path) -> str:
    out = subprocess.run(
        [str(interpreter), "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def _versions(interpreter: Path, names: tuple[str, ...]) -> dict[str, str]:
    code = (
        "import json, sys, importlib.metadata as m\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try: out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    out = subprocess.run(
        [str(interpreter), "-c", code, *names], capture_output=True, text=True, check=True
    )
    versions: dict[str, str] = json.loads(out.stdout)
    return versions
