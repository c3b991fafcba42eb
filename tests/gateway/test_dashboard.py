"""The ops dashboard in a real headless Chromium (Debian's ``chromium`` driven by
selenium), against a real ``edgeinfer serve`` with the bundled models and an admin
key: the page loads without console errors, asks for the key, shows every bundled
model, and Magika's requests chart rises once requests came. The test
saves the screenshot README shows (``docs/dashboard.png``). Skipped, with the reason,
where no Chromium or chromedriver is installed (``.ci/setup`` installs them where it
can)."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.gateway.served import (
    ADMIN_KEY,
    API_KEY,
    ROOT,
    ServedGateway,
    bundled_models,
    start_gateway,
)

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
BUNDLED = ("smollm2", "gemma3-270m", "minilm", "magika")
SCREENSHOT = ROOT / "docs" / "dashboard.png"
PHONE = ROOT / "docs" / "dashboard-phone.png"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedGateway]:
    models = bundled_models(*BUNDLED)
    for m in models:
        m["scaling"]["initial-scale"] = 0  # nothing starts until a request asks
    gw = start_gateway(tmp_path_factory.mktemp("dashboard"), models)
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("no chromium/chromedriver here: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1600"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _until(what: Any, timeout: float = 60.0) -> Any:
    """Wait for the page (it polls once a second) or a process, not for time to pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def _text(driver: Any, element_id: str) -> str:
    """An element's text, read in one script call: the page redraws every second, so a
    reference kept across two calls may be gone."""
    return str(
        driver.execute_script(
            "const e = document.getElementById(arguments[0]); return e ? e.innerText : '';",
            element_id,
        )
    )


def _line_height(driver: Any, model: str, chart: str, series: str) -> float | None:
    """How high one line of one of ``model``'s charts rises (0: flat; None: not drawn)."""
    d = driver.execute_script(
        "const e = document.getElementById(arguments[0]); return e ? e.getAttribute('d') : null;",
        f"chart-{model}-{chart}-{series}",
    )
    ys = [float(y) for y in re.findall(r"[\d.]+,([\d.]+)", d or "")]
    return max(ys) - min(ys) if len(ys) > 1 else None


def test_the_dashboard_shows_every_model_and_moves_with_traffic(
    served: ServedGateway, browser: Any
) -> None:
    browser.get(f"{served.url}/admin/")
    # With an admin key set, the page asks for it before it shows anything.
    _until(lambda: browser.find_element("id", "login").is_displayed())
    assert browser.find_elements("css selector", "section.card") == []
    browser.find_element("id", "key").send_keys(ADMIN_KEY)
    browser.find_element("id", "login-button").click()
    shown = _until(
        lambda: browser.execute_script(
            "return [...document.querySelectorAll('section.card[data-model]')]"
            ".map(c => c.dataset.model);"
        )
    )
    assert sorted(shown) == sorted(BUNDLED)
    for model in BUNDLED:
        text = _text(browser, f"model-{model}")
        assert model in text and "plan" in text.lower()
    # Every candidate of the plan, with why it lost.
    assert "llama-cuda" in _text(browser, "model-smollm2")
    # No request for Magika yet: its requests chart is drawn and flat (the manager may
    # keep a replica warm, so its replicas chart need not be).
    _until(lambda: _line_height(browser, "magika", "traffic", "rps") is not None)
    assert _line_height(browser, "magika", "traffic", "rps") == 0.0

    body = {
        "inputs": [
            {"name": "content", "shape": [1], "datatype": "BYTES", "data": ["#!/bin/sh\necho hi\n"]}
        ]
    }
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for _ in range(3):
        r = httpx.post(
            f"{served.url}/v2/models/magika/infer", json=body, headers=headers, timeout=120
        )
        assert r.status_code == 200, r.text
    _until(lambda: (_line_height(browser, "magika", "traffic", "rps") or 0) > 0)
    _until(lambda: "spawn" in _text(browser, "model-magika"))  # a cold start, with phases
    # Usage per key: the three requests, under the key's name.
    _until(lambda: re.search(r"suite\s+3\s+0", _text(browser, "usage")) is not None)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    SCREENSHOT.parent.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))
    # On a phone's screen nothing runs off the side: the page scrolls only downwards.
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True},
    )
    _until(lambda: "spawn" in _text(browser, "model-magika"))  # redrawn at that width
    width = browser.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth];"
    )
    assert width[0] <= width[1] == 390
    assert browser.save_screenshot(str(PHONE))


def test_the_page_holds_no_data_and_the_state_takes_the_admin_key(served: ServedGateway) -> None:
    page = httpx.get(f"{served.url}/admin/")
    assert page.status_code == 200 and "magika" not in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert httpx.get(f"{served.url}/admin/static/dashboard.js").status_code == 200
    assert httpx.get(f"{served.url}/admin/static/../app.py").status_code == 404
    assert httpx.get(f"{served.url}/admin/static/secret.yaml").status_code == 404
    assert httpx.get(f"{served.url}/admin/state").status_code == 401
    user = {"Authorization": f"Bearer {API_KEY}"}
    assert httpx.get(f"{served.url}/admin/state", headers=user).status_code == 403
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    state = httpx.get(f"{served.url}/admin/state", headers=admin).json()
    assert sorted(m["model"] for m in state["models"]) == sorted(BUNDLED)
    # The access log: JSON lines on the served process's stdout, buffered for at most
    # gateway.access_log.FLUSH_SECONDS.
    line = re.compile(r'^\{"time":"[^"]+","request_id":"[0-9a-f]{24}"', re.M)
    deadline = time.monotonic() + 10
    while not line.search(served.output()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert line.search(served.output())


def test_edgeinfer_top_shows_the_same_models(served: ServedGateway) -> None:
    from typer.testing import CliRunner

    from gateway.cli import app

    result = CliRunner().invoke(
        app, ["top", "--url", served.url, "--once"], env={"EDGEINFER_ADMIN_KEY": ADMIN_KEY}
    )
    assert result.exit_code == 0, result.output
    for model in BUNDLED:
        assert model in result.output
    bad = CliRunner().invoke(
        app, ["top", "--url", served.url, "--once"], env={"EDGEINFER_ADMIN_KEY": "wrong"}
    )
    assert bad.exit_code == 1 and "401" in bad.output
