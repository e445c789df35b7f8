"""The control plane's local web view (issue 13) in a real headless Chromium (Debian's chromium + chromium-driver,
driven by Selenium): the KPI numbers are the tracker's, a PO found by search shows its timeline as an SVG chart.

A screenshot of the page is saved under the test's tmp dir (web-view.png)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from control_plane.settings import Settings as ControlPlaneSettings
from control_plane.wiring import wire as wire_control_plane
from libs.runtime.local_servers import free_port
from libs.runtime.testing import running_service
from services.po_publication.wiring import wire as wire_po
from syncgov.po.v1 import po_service_pb2_grpc
from tests.integration.helpers import (
    eventually,
    publish_order,
    published_changed_and_acknowledged,
    settings_like,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def browser_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return f"{path} is not installed (make browser: Debian's chromium and chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


def fetch_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())


def drive(base: str, expected: dict[str, str], screenshot: Path, profile: Path) -> dict[str, Any]:
    """Open the page, wait for the numbers, search and open PO-1001; what the page showed."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        wait = WebDriverWait(driver, 20)
        driver.get(base + "/")

        def numbers_shown(d: webdriver.Chrome) -> bool:
            return all(d.find_element(By.ID, element_id).text == value for element_id, value in expected.items())

        wait.until(numbers_shown)
        search = driver.find_element(By.ID, "search")
        search.send_keys("po-10")
        wait.until(
            lambda d: (
                [b.get_attribute("data-key") for b in d.find_elements(By.CSS_SELECTOR, "#workflows button")]
                == ["PO-1001"]
            )
        )
        driver.find_element(By.CSS_SELECTOR, '#workflows button[data-key="PO-1001"]').click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#timeline circle")) >= 3)
        labels = [node.text for node in driver.find_elements(By.CSS_SELECTOR, "#timeline text.stage-label")]
        shown = {
            "labels": labels,
            "title": driver.find_element(By.ID, "title").text,
            "rows": len(driver.find_elements(By.CSS_SELECTOR, "#stages tbody tr")),
            "kpis": {element_id: driver.find_element(By.ID, element_id).text for element_id in expected},
        }
        driver.save_screenshot(str(screenshot))
        return shown
    finally:
        driver.quit()


async def test_the_web_view_shows_the_trackers_numbers_and_a_po_timeline_in_headless_chromium(po_settings, tmp_path):
    missing = browser_missing()
    if missing:
        pytest.skip(missing)
    port = free_port()
    cp_settings = settings_like(ControlPlaneSettings, po_settings, web_port=port)
    async with running_service(po_settings, wire_po) as (_, po_channel, _):
        orders = po_service_pb2_grpc.PurchaseOrderServiceStub(po_channel)
        await published_changed_and_acknowledged(orders)
        await publish_order(orders, "PO-2002")

        async with running_service(cp_settings, wire_control_plane) as (control_plane, _, _):
            base = f"http://{cp_settings.grpc_host}:{port}"

            async def summary():
                try:
                    return await asyncio.to_thread(fetch_json, base + "/api/summary")
                except OSError:
                    return None

            answer = await eventually(summary)
            # The numbers the page must show: the tracker's (both orders open, one still awaiting the ERP).
            assert answer["workflows"] == {"open": 2, "completed": 0, "cancelled": 0}
            assert answer["stages"]["po_acknowledgment"] == {"waiting": 1, "stuck": 0}
            expected = {
                "kpi-open": "2",
                "kpi-completed": "0",
                "kpi-cancelled": "0",
                "waiting-po_acknowledgment": "1",
                "stuck-po_acknowledgment": "0",
            }
            screenshot = tmp_path / "web-view.png"
            shown = await asyncio.to_thread(drive, base, expected, screenshot, tmp_path / "chromium-profile")
            assert control_plane.port  # the gRPC side served throughout

    with pytest.raises(urllib.error.URLError):  # the view stopped with the service
        fetch_json(base + "/api/summary")
    assert shown["kpis"] == expected
    assert shown["title"] == "PO-1001"
    stages = [label.split(" · ")[0] for label in shown["labels"]]
    assert stages[:3] == ["published", "changed", "acknowledged"]
    assert shown["rows"] == len(shown["labels"])
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 10_000


async def test_a_web_port_that_cannot_be_bound_fails_the_start_with_its_reason(po_settings):
    import socket

    from libs.runtime.app import StartupError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = settings_like(ControlPlaneSettings, po_settings, web_port=port)
        with pytest.raises(StartupError, match="SYNCGOV_WEB_PORT"):
            async with running_service(settings, wire_control_plane):
                pass
