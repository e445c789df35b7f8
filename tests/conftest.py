"""Session-wide real servers: nats-server and valkey-server from the installed binaries.

Each starts once per test run on a free loopback port in a temporary folder
and is stopped by pid with SIGTERM. Tests isolate themselves with a unique
namespace (streams, subjects and keys), never by sharing state.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from libs.runtime.local_servers import NatsServer, ValkeyServer

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory):
    server = NatsServer(data_dir=tmp_path_factory.mktemp("nats"), sync_always=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory):
    server = ValkeyServer(data_dir=tmp_path_factory.mktemp("valkey")).start()
    yield server
    server.stop()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch):
    """No SYNCGOV_* variable of the developer's shell leaks into settings built by a test."""
    for name in list(os.environ):
        if name.startswith(("SYNCGOV_", "OTEL_")):
            monkeypatch.delenv(name)
    return monkeypatch
