"""The deployment recipes under examples/deploy, read as a test needs them: every command
line they run, and the numbers that must agree (time limit, grace periods, queue names)."""

from __future__ import annotations

import configparser
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from celeriac.cli import load_commands

__all__ = [
    "DEPLOY",
    "CommandLine",
    "command_lines",
    "compose",
    "manifests",
    "option_value",
    "parse_celeriac",
    "seconds",
    "unit",
]

DEPLOY = Path(__file__).resolve().parent.parent / "examples" / "deploy"


@dataclass(frozen=True)
class CommandLine:
    """One command a recipe runs, and where it is written."""

    where: str
    argv: tuple[str, ...]


def unit(name: str) -> configparser.ConfigParser:
    """A systemd unit of the recipes, as sections of keys."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read_string((DEPLOY / "systemd" / name).read_text())
    return parser


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    return loaded


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) of every Kubernetes manifest."""
    found: list[tuple[str, dict[str, Any]]] = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        found.extend((path.name, document) for document in yaml.safe_load_all(path.read_text()))
    return found


def _containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    if document.get("kind") != "Deployment":
        return []
    containers: list[dict[str, Any]] = document["spec"]["template"]["spec"]["containers"]
    return containers


def _shell(command: list[str]) -> list[str]:
    """`sh -c "..."` (a probe) is the command line inside it."""
    if command[:2] in (["sh", "-c"], ["/bin/sh", "-c"]):
        return shlex.split(command[2])
    return command


def command_lines() -> list[CommandLine]:
    """Every command line in the recipes: systemd ExecStart, the Dockerfile's CMD, the
    compose services' commands and health checks, the containers' commands and probes."""
    lines: list[CommandLine] = []
    for path in sorted((DEPLOY / "systemd").glob("*.service")):
        for key in ("ExecStart", "ExecReload", "ExecStop"):
            value = unit(path.name)["Service"].get(key)
            if value:
                lines.append(CommandLine(f"systemd/{path.name} {key}", tuple(shlex.split(value))))
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    for match in re.finditer(r"^CMD (\[.*\])$", dockerfile, re.M):
        lines.append(CommandLine("docker/Dockerfile CMD", tuple(json.loads(match[1]))))
    for name, service in compose()["services"].items():
        if "command" in service and service.get("image", "").startswith("proj"):
            lines.append(CommandLine(f"compose {name} command", tuple(service["command"])))
        test = service.get("healthcheck", {}).get("test")
        if test and test[0] == "CMD-SHELL" and "celeriac" in test[1]:
            argv = shlex.split(test[1].replace("$$", "$"))
            lines.append(CommandLine(f"compose {name} healthcheck", tuple(argv)))
    for filename, document in manifests():
        for container in _containers(document):
            where = f"kubernetes/{filename} {container['name']}"
            lines.append(CommandLine(f"{where} command", tuple(container["command"])))
            probe = container.get("livenessProbe", {}).get("exec", {}).get("command")
            if probe:
                lines.append(CommandLine(f"{where} livenessProbe", tuple(_shell(probe))))
    return lines


def parse_celeriac(argv: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """Parse a `celeriac ...` command line as the real CLI does (options, choices, value
    checks), without running it; return the subcommand and its parameters. A bad option
    raises a click error naming it."""
    cli = load_commands()
    with cli.make_context("celeriac", list(argv[1:])) as context:
        # The subcommand and its arguments (click 8.2 moved them from `protected_args`).
        protected = context.__dict__.get("_protected_args", context.__dict__.get("protected_args"))
        name, command, rest = cli.resolve_command(context, [*(protected or ()), *context.args])
        assert name is not None
        assert command is not None
        parameters = command.make_context(name, rest, parent=context).params
        parameters["app_spec"] = context.params["app_spec"]
        return name, parameters


def option_value(argv: tuple[str, ...], name: str) -> str | None:
    """The value given to option `name` on a command line (`--x v` or `--x=v`)."""
    for index, token in enumerate(argv):
        if token == name and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
    return None


def seconds(value: str | int) -> float:
    """A duration as systemd (`330`, `5min`) or compose (`330s`, `1m30s`) writes it."""
    if isinstance(value, int):
        return float(value)
    total = 0.0
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    for number, suffix in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[suffix]
    return total
