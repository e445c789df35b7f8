"""``syncgov up``: nats-server, valkey-server and every service as child processes, stopped in order.

Children run in their own sessions so a Ctrl-C reaches only this supervisor,
which then stops services first (they drain NATS and close Valkey), then
Valkey, then NATS. If any child dies, the whole stack is stopped and the
exit code says so.

The servers it starts refuse anonymous clients (DESIGN rule 11, docs/security.md):
every run draws new random passwords, each component connects as its own user
with its own subject permissions and Valkey ACL, and the operator's credentials
(for ``syncgov audit`` and other direct tools) are written to
``<data-dir>/operator.env``, readable by the owner only.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from libs.cli.components import Component
from libs.runtime.broker_access import ADMIN_USER, BrokerCredentials, without_credentials
from libs.runtime.local_servers import LocalServer, NatsServer, ValkeyServer, die_with_parent
from libs.runtime.probe import health_status


@dataclass
class StackOptions:
    data_dir: Path
    grpc_port_base: int
    metrics_port_base: int | None
    nats_url: str | None
    redis_url: str | None
    nats_port: int
    redis_port: int
    sync_always: bool
    components: list[Component]
    log_format: str = "json"
    ready_timeout: float = 60.0
    # What nats-server and valkey-server get when this process dies (LocalServer.death_signal): SIGKILL where this
    # process freezes them (bench/chaos.py stops Valkey).
    server_death_signal: int = signal.SIGTERM


@dataclass
class RunningComponent:
    component: Component
    address: str
    log_path: Path
    process: subprocess.Popen[bytes]


@dataclass
class Stack:
    options: StackOptions
    servers: list[LocalServer] = field(default_factory=list)
    children: list[RunningComponent] = field(default_factory=list)
    nats_url: str = ""  # without credentials: what the stack prints
    redis_url: str = ""
    nats_server: NatsServer | None = None
    valkey_server: ValkeyServer | None = None
    credentials: BrokerCredentials = field(default_factory=BrokerCredentials.generate, repr=False)

    @property
    def operator_env(self) -> Path:
        return self.options.data_dir / "operator.env"

    def start_servers(self) -> None:
        options = self.options
        self.nats_url = without_credentials(options.nats_url or "")
        self.redis_url = without_credentials(options.redis_url or "")
        # The permissions name the namespace the components will use (they read it from the same environment).
        namespace = os.environ.get("SYNCGOV_NAMESPACE", "sg")
        if not options.nats_url:
            self.nats_server = NatsServer(
                data_dir=options.data_dir / "nats",
                port=options.nats_port,
                sync_always=options.sync_always,
                credentials=self.credentials,
                auth_namespace=namespace,
                death_signal=options.server_death_signal,
            )
            self.servers.append(self.nats_server.start())
            self.nats_url = self.nats_server.address_url
        if not options.redis_url:
            self.valkey_server = ValkeyServer(
                data_dir=options.data_dir / "valkey",
                port=options.redis_port,
                credentials=self.credentials,
                auth_namespace=namespace,
                death_signal=options.server_death_signal,
            )
            self.servers.append(self.valkey_server.start())
            self.redis_url = self.valkey_server.address_url
        self._write_operator_env()

    def _write_operator_env(self) -> None:
        """The operator's credentials for tools run beside the stack: ``set -a; . .syncgov/operator.env``."""
        lines = []
        if self.nats_server is not None:
            lines.append(f"SYNCGOV_NATS_URL={self.nats_server.url_for(ADMIN_USER)}")
        if self.valkey_server is not None:
            lines.append(f"SYNCGOV_REDIS_URL={self.valkey_server.url_for(ADMIN_USER)}")
        self.options.data_dir.mkdir(parents=True, exist_ok=True)
        self.operator_env.unlink(missing_ok=True)
        if lines:
            fd = os.open(self.operator_env, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write("\n".join(lines) + "\n")

    def component_env(self, component: Component) -> dict[str, str]:
        """Where ``component`` finds NATS and Valkey, and as whom it connects (its own user)."""
        env = {"SYNCGOV_NATS_URL": self.nats_url, "SYNCGOV_REDIS_URL": self.redis_url}
        if self.nats_server is None:  # an external server: its URL as given, credentials and all
            env["SYNCGOV_NATS_URL"] = self.options.nats_url or ""
        else:
            env["SYNCGOV_NATS_USER"] = component.name
            env["SYNCGOV_NATS_PASSWORD"] = self.credentials.password(component.name)
        if self.valkey_server is None:
            env["SYNCGOV_REDIS_URL"] = self.options.redis_url or ""
        else:
            env["SYNCGOV_REDIS_USER"] = component.name
            env["SYNCGOV_REDIS_PASSWORD"] = self.credentials.password(component.name)
        return env

    def start_components(self) -> None:
        logs = self.options.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for component in self.options.components:
            port = component.grpc_port(self.options.grpc_port_base)
            inherited = {
                name: value
                for name, value in os.environ.items()
                if name not in ("SYNCGOV_NATS_PASSWORD_FILE", "SYNCGOV_REDIS_PASSWORD_FILE")
            }
            env = {
                **inherited,
                **self.component_env(component),
                "SYNCGOV_GRPC_HOST": "127.0.0.1",
                "SYNCGOV_GRPC_PORT": str(port),
                "SYNCGOV_LOG_FORMAT": self.options.log_format,
            }
            # On a laptop every workflow is traced (the services' default samples one in ten; docs/decisions.md).
            env.setdefault("OTEL_TRACES_SAMPLER_ARG", "1")
            if self.options.metrics_port_base:
                env["SYNCGOV_METRICS_PORT"] = str(self.options.metrics_port_base + component.port_offset)
            log_path = logs / f"{component.name}.log"
            with log_path.open("ab") as log_file:
                process = subprocess.Popen(
                    [sys.executable, "-m", component.module],
                    env=env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                )
            self.children.append(RunningComponent(component, f"127.0.0.1:{port}", log_path, process))

    async def wait_until_serving(self) -> dict[str, str]:
        """Health of every component once all serve, or as they stand when the timeout hits."""
        deadline = time.monotonic() + self.options.ready_timeout
        states: dict[str, str] = {}
        while True:
            for child in self.children:
                if child.process.poll() is not None:
                    states[child.component.name] = f"EXITED({child.process.returncode})"
                    continue
                async with grpc.aio.insecure_channel(child.address) as channel:
                    states[child.component.name] = await health_status(channel, deadline_seconds=1.0)
            if all(state == "SERVING" for state in states.values()) or time.monotonic() > deadline:
                return states
            if any(state.startswith("EXITED") for state in states.values()):
                return states
            await asyncio.sleep(0.25)

    def dead_child(self) -> RunningComponent | None:
        return next((child for child in self.children if child.process.poll() is not None), None)

    def stop(self, timeout: float = 15.0) -> None:
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        for child in reversed(self.children):
            try:
                child.process.wait(timeout)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        for server in reversed(self.servers):
            server.stop()
