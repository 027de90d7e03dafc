"""Private servers for tests that stop, restart or break their server: a `redis-server`
(PrivateRedis) and a RabbitMQ node (Node), each on free loopback ports with its own
directory, stopped by pid. Used by the integration and chaos suites.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
import redis

from tests.helpers import require_programs, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

__all__ = [
    "CTL",
    "SERVER",
    "Node",
    "PrivateRedis",
    "free_port",
    "make_test_ca",
    "node",
    "require_rabbitmq_server",
    "require_redis_server",
]

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_test_ca(directory: Path, *, names: str = "IP:127.0.0.1") -> None:
    """A throwaway CA (`ca.crt`), a server certificate for `names` (`server.crt`,
    `server.key`; openssl subjectAltName syntax) and a client certificate (`client.crt`,
    `client.key`), all signed by that CA and valid for a day."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ext.cnf").write_text(f"subjectAltName={names}\n")

    def openssl(command: str) -> None:
        subprocess.run(
            ["openssl", *command.split()],
            cwd=directory,
            check=True,
            capture_output=True,
            timeout=60,
        )

    openssl(
        "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 1 "
        "-subj /CN=celeriac-test-ca"
    )
    for name, extra in (("server", "-extfile ext.cnf"), ("client", "")):
        openssl(f"req -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr -subj /CN={name}")
        openssl(
            f"x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
            f"-out {name}.crt -days 1 {extra}"
        )


@dataclass
class Node:
    """A private RabbitMQ node."""

    base: Path
    name: str = field(default_factory=lambda: f"celeriac-{uuid.uuid4().hex[:8]}@localhost")
    port: int = field(default_factory=free_port)
    tls_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    beam_pid: int | None = None
    # The names the TLS listener's certificate is for (openssl subjectAltName syntax).
    certificate_names: str = "DNS:localhost,IP:127.0.0.1"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            # Its own Erlang cookie and config: never the shared node's.
            "HOME": str(self.base),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.base / "node.pid"),
        }

    @property
    def ca_file(self) -> Path:
        return self.base / "certs" / "ca.pem"

    def make_certificates(self) -> None:
        """A throwaway CA and a server certificate for localhost / 127.0.0.1."""
        certs = self.base / "certs"
        certs.mkdir(exist_ok=True)
        (certs / "ext.cnf").write_text(f"subjectAltName={self.certificate_names}\n")
        for command in (
            "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 "
            "-subj /CN=celeriac-test-ca",
            "req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost",
            "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
            "-out server.pem -days 2 -extfile ext.cnf",
        ):
            subprocess.run(
                ["openssl", *command.split()],
                cwd=certs,
                check=True,
                capture_output=True,
                timeout=60,
            )

    def start(self) -> None:
        certs = self.base / "certs"
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n"
            f"listeners.ssl.1 = 127.0.0.1:{self.tls_port}\n"
            f"ssl_options.cacertfile = {certs / 'ca.pem'}\n"
            f"ssl_options.certfile = {certs / 'server.pem'}\n"
            f"ssl_options.keyfile = {certs / 'server.key'}\n"
            "ssl_options.verify = verify_none\n"
            "ssl_options.fail_if_no_peer_cert = false\n"
        )
        (self.base / "enabled_plugins").write_text("[].\n")
        self.process = subprocess.Popen(
            [SERVER],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        pid_file = self.base / "node.pid"
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=60)
        self.beam_pid = int(pid_file.read_text().strip())
        self.wait_accepting()

    def wait_accepting(self) -> None:
        def accepting() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_for(accepting, timeout=60, interval=0.1, what=f"RabbitMQ node {self.name}")

    def ctl(self, *args: str) -> None:
        subprocess.run(
            [CTL, "-n", self.name, *args], env=self.env, check=True, timeout=60, capture_output=True
        )

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.wait_accepting()

    def kill(self, sig: int = signal.SIGTERM) -> None:
        """Stop the node by pid (and reap the launcher)."""
        if self.beam_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.beam_pid, sig)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    os.kill(self.beam_pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(self.beam_pid, signal.SIGKILL)
            self.beam_pid = None
        if self.process is not None:
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
            self.process = None
        (self.base / "node.pid").unlink(missing_ok=True)


class PrivateRedis:
    """A redis-server of this test's own, restartable on the same port and directory."""

    def __init__(
        self,
        directory: Path,
        *extra: str,
        tls: Path | None = None,
        unix: bool = False,
        client_certificates: bool = False,
    ) -> None:
        self.port = free_port()
        self.directory = directory
        self.extra = list(extra)
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client_options: dict[str, object] = {"host": "127.0.0.1", "port": self.port}
        if tls is not None:
            # TLS only: the plain port is switched off.
            self.extra += [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(tls / "server.crt"),
                "--tls-key-file",
                str(tls / "server.key"),
                "--tls-ca-cert-file",
                str(tls / "ca.crt"),
                "--tls-auth-clients",
                "yes" if client_certificates else "no",
            ]
            self.url = f"rediss://127.0.0.1:{self.port}/0"
            self.client_options.update(ssl=True, ssl_ca_certs=str(tls / "ca.crt"))
            if client_certificates:
                self.client_options.update(
                    ssl_certfile=str(tls / "client.crt"), ssl_keyfile=str(tls / "client.key")
                )
        if unix:
            self.socket = directory / "redis.sock"
            self.extra += ["--unixsocket", str(self.socket)]
            self.url = f"redis+socket://{self.socket}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--save",
                "",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()
        try:
            wait_for(lambda: self._ready(client), timeout=10, what="private redis-server")
        finally:
            client.close()

    @staticmethod
    def _ready(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.exceptions.RedisError:
            return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            # SIGTERM: Redis fsyncs its AOF and exits cleanly.
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart(self, pause: float = 0.0) -> None:
        self.stop()
        time.sleep(pause)
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis(**self.client_options)  # type: ignore[arg-type]


def require_redis_server() -> None:
    """Skip without `redis-server`; fail in CI, which must have it."""
    require_programs("redis-server")


def require_rabbitmq_server() -> None:
    """Skip without the RabbitMQ server binaries; fail in CI, which must have them."""
    require_programs(SERVER, CTL, "erl", "openssl")


# One private node for the whole run (starting one takes about 8 s): the five modules
# that use it each restore what they change (a stopped app, a crashed node, a memory
# alarm, `consumer_timeout`) before they end, and name their own queues.
@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    require_rabbitmq_server()
    started = Node(tmp_path_factory.mktemp("rabbit"))
    try:
        started.make_certificates()
        started.start()
        yield started
    finally:
        started.kill()
