"""Servers started for a process go away with it, even when it is killed without a word."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

STARTER = """
import sys, pathlib, signal, time
from libs.runtime.local_servers import ValkeyServer
server = ValkeyServer(data_dir=pathlib.Path(sys.argv[1]), death_signal=signal.Signals[sys.argv[2]]).start()
print(server.process.pid, flush=True)
time.sleep(60)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie waiting for its reaper is gone for our purpose
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def started_by_a_parent(tmp_path, death_signal: str) -> tuple[subprocess.Popen[str], int]:
    parent = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(tmp_path), death_signal], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    server_pid = int(parent.stdout.readline())
    assert alive(server_pid)
    return parent, server_pid


def gone_after_parent_killed(parent: subprocess.Popen[str], server_pid: int, within: float = 10) -> bool:
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + within
    while alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(server_pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_a_killed_parent_takes_its_servers_with_it(tmp_path):
    parent, server_pid = started_by_a_parent(tmp_path, "SIGTERM")
    assert gone_after_parent_killed(parent, server_pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_a_server_its_parent_froze_goes_with_it_when_started_to_be_killed(tmp_path):
    """A frozen (SIGSTOP) server keeps a SIGTERM pending for ever; one started with SIGKILL as its death signal, as
    the test fixtures, bench/chaos.py and bench/publish_po.py start the processes they freeze, still goes."""
    parent, server_pid = started_by_a_parent(tmp_path, "SIGTERM")
    os.kill(server_pid, signal.SIGSTOP)
    try:
        assert not gone_after_parent_killed(parent, server_pid, within=1.0), "SIGTERM ended a stopped process?"
    finally:
        os.kill(server_pid, signal.SIGKILL)
    parent, server_pid = started_by_a_parent(tmp_path / "killed", "SIGKILL")
    os.kill(server_pid, signal.SIGSTOP)
    try:
        assert gone_after_parent_killed(parent, server_pid)
    finally:
        if alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)
