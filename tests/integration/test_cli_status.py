"""`syncgov status` as a user or a script runs it: piped, exit code non-zero when a built component is down."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from libs.cli.components import existing_components

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
ROOT = Path(__file__).resolve().parents[2]


def _closed_port_base() -> int:
    """A base port whose six successors nobody listens on (bound and released, so refused at once)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + 6 < 65536:
            return base


def test_status_exits_non_zero_when_built_components_are_down_and_names_them_whole():
    base = _closed_port_base()
    done = subprocess.run(
        [sys.executable, "-m", "libs.cli", "status", "--grpc-port-base", str(base)],
        capture_output=True,
        cwd=ROOT,
        timeout=45,
        text=True,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    for component in existing_components():
        assert f"127.0.0.1:{component.grpc_port(base)}" in done.stdout
    assert "not serving: control-plane" in done.stdout
    assert "…" not in done.stdout
