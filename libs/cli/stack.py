"""``syncgov up``: nats-server, valkey-server and every service as child processes, stopped in order.

Children run in their own sessions so a Ctrl-C reaches only this supervisor,
which then stops services first (they drain NATS and close Valkey), then
Valkey, then NATS. If any child dies, the whole stack is stopped and the
exit code says so.
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
    nats_url: str = ""
    redis_url: str = ""

    def start_servers(self) -> None:
        options = self.options
        self.nats_url = options.nats_url or ""
        self.redis_url = options.redis_url or ""
        if not options.nats_url:
            nats = NatsServer(
                data_dir=options.data_dir / "nats", port=options.nats_port, sync_always=options.sync_always
            )
            self.servers.append(nats.start())
            self.nats_url = nats.url
        if not options.redis_url:
            valkey = ValkeyServer(data_dir=options.data_dir / "valkey", port=options.redis_port)
            self.servers.append(valkey.start())
            self.redis_url = valkey.url

    def start_components(self) -> None:
        logs = self.options.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for component in self.options.components:
            port = component.grpc_port(self.options.grpc_port_base)
            env = {
                **os.environ,
                "SYNCGOV_NATS_URL": self.nats_url,
                "SYNCGOV_REDIS_URL": self.redis_url,
                "SYNCGOV_GRPC_HOST": "127.0.0.1",
                "SYNCGOV_GRPC_PORT": str(port),
                "SYNCGOV_LOG_FORMAT": self.options.log_format,
            }
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
