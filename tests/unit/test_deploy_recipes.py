"""The deployment recipes (examples/deploy, docs/deploy.md) hold together: every command
line they run parses with the real CLI, the grace periods cover the warm shutdown, the
probe pings the pod's own worker, and the KEDA trigger counts the queue the workers
consume. Running them for real: tests/integration/test_deploy_recipes.py."""

from __future__ import annotations

from typing import Any

import click
import pytest

from tests.deploy_recipes import (
    DEPLOY,
    command_lines,
    compose,
    manifests,
    option_value,
    parse_celeriac,
    seconds,
    unit,
)

LINES = command_lines()

# What a worker's warm shutdown needs beyond its longest task (the hard time limit):
# returning prefetched messages, storing the last results, closing connections.
SHUTDOWN_MARGIN = 10.0


def worker_lines() -> list[tuple[str, tuple[str, ...]]]:
    return [
        (line.where, line.argv)
        for line in LINES
        if line.argv[0].endswith("celeriac") and parse_celeriac(line.argv)[0] == "worker"
    ]


def deployment(name: str) -> dict[str, Any]:
    (document,) = [
        document
        for _, document in manifests()
        if document["kind"] == "Deployment" and document["metadata"]["name"] == name
    ]
    return document


@pytest.mark.parametrize("line", LINES, ids=[line.where for line in LINES])
def test_every_command_line_parses(line) -> None:
    program = line.argv[0]
    if program == "python":
        assert line.argv[1] == "-m"
        module = DEPLOY.joinpath(*line.argv[2].split(".")).with_suffix(".py")
        assert module.is_file(), f"{line.where}: no module {line.argv[2]}"
        return
    assert program == "celeriac" or program.endswith("/bin/celeriac"), line.where
    try:
        _, parameters = parse_celeriac(line.argv)
    except click.UsageError as exc:
        pytest.fail(f"{line.where}: {exc.format_message()}")
    assert parameters["app_spec"] == "proj", f"{line.where}: the recipes' app is proj"


def test_a_bad_option_in_a_recipe_would_be_caught() -> None:
    with pytest.raises(click.ClickException, match=r"(?i)no such option"):
        parse_celeriac(("celeriac", "-A", "proj", "worker", "--no-such-option"))
    with pytest.raises(click.UsageError):
        parse_celeriac(("celeriac", "-A", "proj", "worker", "--loglevel", "LOUD"))


def test_the_recipes_run_a_worker_beat_and_a_probe_everywhere() -> None:
    commands = {parse_celeriac(line.argv)[0] for line in LINES if line.argv[0] != "python"}
    assert {"worker", "beat", "inspect"} <= commands
    assert set(compose()["services"]) == {"redis", "web", "worker", "beat"}


def test_every_worker_has_a_hard_time_limit() -> None:
    # The grace periods below are computed from it: without one, a task may run for ever
    # and no grace period is long enough for a warm shutdown.
    for where, argv in worker_lines():
        if where.startswith("docker/Dockerfile"):
            continue  # the image's default command; compose and Kubernetes set their own
        assert option_value(argv, "--time-limit") is not None, where


def test_systemd_gives_the_warm_shutdown_its_time() -> None:
    service = unit("celeriac-worker.service")["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    # SIGTERM to the supervisor only: it drains its children itself.
    assert service["KillMode"] == "mixed"
    assert service.get("KillSignal", "SIGTERM") == "SIGTERM"
    time_limit = float(option_value(tuple(service["ExecStart"].split()), "--time-limit") or 0)
    assert seconds(service["TimeoutStopSec"]) >= time_limit + SHUTDOWN_MARGIN


def test_compose_gives_the_warm_shutdown_its_time() -> None:
    worker = compose()["services"]["worker"]
    time_limit = float(option_value(tuple(worker["command"]), "--time-limit") or 0)
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert seconds(worker["stop_grace_period"]) >= time_limit + SHUTDOWN_MARGIN


def test_kubernetes_gives_the_warm_shutdown_its_time() -> None:
    pod = deployment("proj-worker")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    time_limit = float(option_value(tuple(container["command"]), "--time-limit") or 0)
    assert pod["terminationGracePeriodSeconds"] >= time_limit + SHUTDOWN_MARGIN


def test_the_liveness_probe_pings_the_pods_own_worker() -> None:
    (container,) = deployment("proj-worker")["spec"]["template"]["spec"]["containers"]
    node = option_value(tuple(container["command"]), "--hostname")
    assert node == "worker@$(POD_NAME)"
    (probe,) = [line for line in LINES if line.where.endswith("worker livenessProbe")]
    command, parameters = parse_celeriac(probe.argv)
    assert (command, parameters["method"]) == ("inspect", "ping")
    # The probe runs in a shell, where the variable is $POD_NAME.
    assert parameters["destination"] == "worker@$POD_NAME"
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in (
        container["env"]
    )


def test_the_compose_health_check_pings_the_containers_own_worker() -> None:
    worker = compose()["services"]["worker"]
    assert option_value(tuple(worker["command"]), "--hostname") == "worker@%h"
    (check,) = [line for line in LINES if line.where == "compose worker healthcheck"]
    _, parameters = parse_celeriac(check.argv)
    # %h is the container's host name, which is $HOSTNAME inside it.
    assert parameters["destination"] == "worker@$HOSTNAME"


def test_keda_scales_the_worker_deployment_on_the_queue_it_consumes() -> None:
    (scaled,) = [document for _, document in manifests() if document["kind"] == "ScaledObject"]
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == "proj-worker"
    # A due ETA message reaches the list only when a worker fetches (docs/deploy.md):
    # scaling to zero would strand it where the list trigger cannot see it.
    assert spec["minReplicaCount"] >= 1
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis"
    (container,) = deployment("proj-worker")["spec"]["template"]["spec"]["containers"]
    queues = (option_value(tuple(container["command"]), "--queues") or "celery").split(",")
    assert trigger["metadata"]["listName"] in queues
    # The worker's prefetch window leaves the list uncounted: keep it to one per slot.
    assert option_value(tuple(container["command"]), "--prefetch-multiplier") == "1"


def test_the_config_map_is_what_the_pods_read() -> None:
    (config,) = [document for _, document in manifests() if document["kind"] == "ConfigMap"]
    assert set(config["data"]) == {"CELERIAC_BROKER_URL", "CELERIAC_RESULT_BACKEND"}
    for _, document in manifests():
        if document["kind"] == "Deployment":
            for container in document["spec"]["template"]["spec"]["containers"]:
                assert {"configMapRef": {"name": config["metadata"]["name"]}} in container[
                    "envFrom"
                ]
