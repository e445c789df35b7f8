"""The chaos run at CI size: a seed-fixed, 15-second `make chaos` (bench/chaos.py) must hold every invariant.

The script starts its own nats-server, valkey-server, fault proxies and services as processes; it is
started here with PR_SET_PDEATHSIG, and its children with the same, so everything dies with the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from libs.runtime.local_servers import die_with_parent

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_chaos_run_holds_every_invariant(tmp_path: Path) -> None:
    report = tmp_path / "chaos.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCGOV_", "OTEL_"))}
    command = [
        sys.executable,
        str(ROOT / "bench" / "chaos.py"),
        "--seconds",
        "15",
        "--seed",
        "7",
        "--workers",
        "4",
        "--gap",
        "1.0",
        "--data-dir",
        str(tmp_path / "stack"),
        "--json",
        str(report),
    ]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=die_with_parent,
    )
    try:
        output, _ = process.communicate(timeout=150)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    result = json.loads(report.read_text())
    assert result["unexpected_refusals"] == [], output
    violated = [i for i in result["invariants"] if not i["held"]]
    assert violated == [], output
    names = " ".join(i["name"] for i in result["invariants"])
    for invariant in (
        "exactly one effect",
        "no acknowledged write lost",
        "equals its projection",
        "no exception dropped",
    ):
        assert invariant in names
    assert sum(result["faults"].values()) >= 6, result["faults"]
    assert result["faults"].get("kill nats-server", 0) + result["faults"].get("kill po-publication", 0) >= 1
    assert sum(result["ok"].values()) >= 100, result["ok"]
    assert result["refused_expected"], "the duplicate transactions were provoked and refused"
    assert "invariants held" in output
