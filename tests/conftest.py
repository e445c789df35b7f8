"""Session-wide real servers: nats-server and valkey-server from the installed binaries.

Each starts once per test run on a free loopback port in a temporary folder
and is stopped by pid with SIGTERM. Both refuse anonymous clients, as in
production (DESIGN rule 11): ``server.url`` carries the operator's
credentials, ``server.url_for(component)`` a component's, and a service run
through ``running_service`` connects as its component. Tests isolate themselves with a unique
namespace (streams, subjects and keys), never by sharing state.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from libs.runtime.broker_access import BrokerCredentials
from libs.runtime.local_servers import NatsServer, ValkeyServer
from libs.runtime.testing import register_servers, unregister_servers

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


@pytest.fixture(scope="session")
def broker_credentials() -> BrokerCredentials:
    """Random passwords for the operator and every component, new for each run."""
    return BrokerCredentials.generate()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory, broker_credentials: BrokerCredentials):
    server = NatsServer(
        data_dir=tmp_path_factory.mktemp("nats"),
        sync_always=False,
        credentials=broker_credentials,
        death_signal=signal.SIGKILL,  # tests freeze it (SIGSTOP): a run killed meanwhile must not leave it stopped
    ).start()
    register_servers(server)
    yield server
    unregister_servers(server)
    server.stop()


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory, broker_credentials: BrokerCredentials):
    server = ValkeyServer(
        data_dir=tmp_path_factory.mktemp("valkey"), credentials=broker_credentials, death_signal=signal.SIGKILL
    ).start()
    register_servers(server)
    yield server
    unregister_servers(server)
    server.stop()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch):
    """No SYNCGOV_* variable of the developer's shell leaks into settings built by a test."""
    for name in list(os.environ):
        if name.startswith(("SYNCGOV_", "OTEL_")):
            monkeypatch.delenv(name)
    return monkeypatch
