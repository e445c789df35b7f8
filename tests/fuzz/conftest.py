"""Fixtures of the hostile-input suite: the components under fuzz, per-test failure logs, the summary.

``make test`` runs the CI size (a fixed seed, a few inputs per RPC); ``make fuzz`` sets
``SYNCGOV_FUZZ_INPUTS`` (at least 10,000) and the summary at the end prints how many inputs ran and
every status seen per RPC. A test's failures are collected while it runs and fail it at its end,
each distinct one with the smallest input that showed it (its bytes under ``SYNCGOV_FUZZ_ARTIFACTS``,
default ``.pytest_cache/fuzz``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from libs.cli.components import Component
from tests.fuzz.harness import RECORD, FuzzLog, Pool, Target
from tests.fuzz.targets import fuzzed_components

LOG_KEY = pytest.StashKey[FuzzLog]()
ARTIFACTS = Path(
    os.environ.get("SYNCGOV_FUZZ_ARTIFACTS", Path(__file__).resolve().parents[2] / ".pytest_cache" / "fuzz")
)


@pytest.fixture(scope="session")
async def fuzz_pool(nats_server, valkey_server):
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(("SYNCGOV_", "OTEL_")) and not name.startswith("SYNCGOV_FUZZ_"):
                patch.delenv(name)
        pool = Pool(nats_server.url, valkey_server.url)
        try:
            yield pool
        finally:
            await pool.aclose()


@pytest.fixture
def fuzz_log(request: pytest.FixtureRequest) -> FuzzLog:
    log = FuzzLog()
    request.node.stash[LOG_KEY] = log
    return log


def component_named(name: str) -> Component:
    return next(component for component in fuzzed_components() if component.name == name)


@pytest.fixture
async def target(fuzz_pool: Pool, request: pytest.FixtureRequest) -> Target:
    return await fuzz_pool.get(component_named(request.param))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    outcome = yield
    log = item.stash.get(LOG_KEY, None)
    if log is not None and log.failures and outcome.excinfo is None:
        outcome.force_exception(AssertionError(log.report(ARTIFACTS)))


def pytest_terminal_summary(terminalreporter) -> None:
    for line in RECORD.summary():
        terminalreporter.write_line(line)
