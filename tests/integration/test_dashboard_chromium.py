"""The built-in dashboard in headless Chromium, reading a real InfluxDB (deploy/local/stack).

The data are real sensor streams (SKAB, ``../shared/data``) stored the way the sink stores
scored ticks: some entries knocked out and imputed with a σ, a simple z-score as the anomaly
score, alarm events at each rising edge with the channels that drove them. The page must list
the devices, count the alarms, mark imputed points and σ bands, show errors and empty states,
and never execute a device name. Screenshots go to ``$GAPWATCH_ARTIFACTS_DIR`` (else tmp_path).
"""

from __future__ import annotations

import base64
import csv
import os
import shutil
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import fmean, pstdev
from typing import Any

import pytest

from edge.schema import ScoredTick
from pipeline.dashboard import DashboardApi, DashboardServer, InfluxSource, serve_in_thread
from pipeline.dashboard.access import Access
from pipeline.dashboard.memory_source import MemorySource
from pipeline.dashboard.queries import Window
from pipeline.lineproto import LineEncoder

pytestmark = pytest.mark.integration

DATA_DIR = Path(
    os.environ.get(
        "GAPWATCH_DATA_DIR", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    )
)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_S = 30
ROWS = 900  # 15 minutes of 1 Hz data per device
HOSTILE = "<img src=x onerror=window.__xss=1>"
FLEET = (  # site, device, SKAB file
    ("lab", "pump-1", "skab/other/1.csv"),
    ("lab", "pump-2", "skab/valve1/0.csv"),
    ("plant-b", "valve-7", "skab/valve1/3.csv"),
)


def _read_skab(path: Path, rows: int) -> tuple[list[str], list[tuple[int, list[float]]]]:
    with path.open(newline="") as fh:
        reader = csv.reader(fh, delimiter=";")
        header = next(reader)
        channels = header[1:9]
        out = []
        for row in reader:
            ts = datetime.fromisoformat(row[0]).replace(tzinfo=UTC)
            out.append((int(ts.timestamp() * 1000), [float(v) for v in row[1:9]]))
            if len(out) == rows:
                break
    return channels, out


def skab_ticks(data_dir: Path) -> list[ScoredTick]:
    """Three SKAB streams as scored ticks: gaps imputed with a σ, a z-score with hysteresis.

    Pressure is silent for 40 ticks (rows 400-439) and the whole device for 12 (rows 650-661);
    silent entries are imputed with the calibration mean and its spread as σ. The score is the
    mean squared z-score of the observed entries against the first 300 rows; the threshold is 1.5
    times the highest EWMA-smoothed calibration score; a tick is anomalous from the crossing
    until the smoothed score falls below 0.8 times the threshold.
    """
    ticks = []
    for site, device, name in FLEET:
        channels, rows = _read_skab(data_dir / name, ROWS)
        calib = [r[1] for r in rows[:300]]
        mean = [fmean(col) for col in zip(*calib, strict=True)]
        std = [pstdev(col) or 1.0 for col in zip(*calib, strict=True)]
        smoothed, peak = 0.0, 0.0
        for calib_row in calib:
            zsq = [((v - m) / s) ** 2 for v, m, s in zip(calib_row, mean, std, strict=True)]
            smoothed = 0.8 * smoothed + 0.2 * fmean(zsq)
            peak = max(peak, smoothed)
        threshold = 1.5 * peak
        smoothed, active = 0.0, False
        for i, (ts, row) in enumerate(rows):
            values: dict[str, float | None] = {}
            imputed: list[str] = []
            sigma: dict[str, float] = {}
            z: dict[str, float] = {}
            for c, (ch, v) in enumerate(zip(channels, row, strict=True)):
                if (400 <= i < 440 and ch == "Pressure") or 650 <= i < 662:
                    values[ch], sigma[ch] = mean[c], std[c]
                    imputed.append(ch)
                else:
                    values[ch] = v
                    z[ch] = abs(v - mean[c]) / std[c]
            score = fmean(x * x for x in z.values()) if z else None
            if score is not None:
                smoothed = 0.8 * smoothed + 0.2 * score
            active = smoothed > threshold or (active and smoothed >= 0.8 * threshold)
            top = tuple(sorted(z, key=lambda k: z[k], reverse=True)[:3]) if active else ()
            ticks.append(
                ScoredTick(
                    site=site,
                    device=device,
                    ts_ms=ts,
                    values=values,
                    imputed=tuple(imputed),
                    sigma=sigma,
                    score=score,
                    smoothed=smoothed,
                    threshold=threshold,
                    anomaly=active,
                    top_channels=top,
                    model="skab",
                    model_version="20240501T120000",
                )
            )
    return ticks


def encode(ticks: list[ScoredTick]) -> bytes:
    """The line protocol the sink writes for these ticks."""
    encoder = LineEncoder()
    return b"".join(encoder.encode(t) for t in ticks)


def influx_query(url: str, statement: str) -> None:
    data = urllib.parse.urlencode({"q": statement}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{url}/query", data=data), timeout=30):
        pass


def influx_write(url: str, db: str, lines: bytes) -> None:
    target = f"{url}/write?{urllib.parse.urlencode({'db': db, 'precision': 'ms'})}"
    with urllib.request.urlopen(urllib.request.Request(target, data=lines), timeout=60):
        pass


@pytest.fixture
def influx_db(influx_url: str, unique_name: str) -> Iterator[str]:
    """A fresh database, dropped afterwards."""
    influx_query(influx_url, f'CREATE DATABASE "{unique_name}"')
    try:
        yield unique_name
    finally:
        influx_query(influx_url, f'DROP DATABASE "{unique_name}"')


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (CHROMIUM and CHROMEDRIVER):
        message = (
            "chromium and chromium-driver are needed (apt-get install chromium chromium-driver)"
        )
        if os.environ.get("GAPWATCH_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1600,1300")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def dashboard() -> Iterator[Callable[..., str]]:
    """Start a dashboard server on a free port: ``dashboard(source, clock) -> base URL``."""
    servers: list[DashboardServer] = []

    def start(source: Any, now: datetime, access: Access | None = None) -> str:
        api = DashboardApi(source, clock=lambda: now, refresh_s=3600)
        server = DashboardServer(("127.0.0.1", 0), api, access=access)
        serve_in_thread(server)
        servers.append(server)
        return server.url

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    base = os.environ.get("GAPWATCH_ARTIFACTS_DIR")
    out = Path(base) / "dashboard" if base else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    return out


def _wait_loaded(driver: Any, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, WAIT_S).until(
        lambda d: d.execute_script("return document.body.dataset.loaded || ''") in ("true", "error")
    )


def _screenshot(driver: Any, path: Path) -> None:
    """The whole page, beyond the viewport (Chrome DevTools protocol)."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 6000), "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    print(f"dashboard screenshot: {path}")
    assert path.stat().st_size > 10_000


def test_page_shows_fleet_alarms_and_imputed_points(
    browser: Any, influx_url: str, influx_db: str, dashboard: Callable[..., str], artifacts: Path
) -> None:
    from selenium.webdriver.common.by import By

    ticks = skab_ticks(DATA_DIR)
    hostile = replace(ticks[0], device=HOSTILE, ts_ms=ticks[0].ts_ms - 3_600_000)
    lines = encode([*ticks, hostile])
    influx_write(influx_url, influx_db, lines)
    now = datetime(2020, 3, 9, 12, tzinfo=UTC)
    memory = MemorySource()  # what the page must show: the same API over the in-memory double
    memory.write_lines(lines)
    fleet = DashboardApi(memory, clock=lambda: now).fleet({"range": "all"}).body
    expected = {(d["site"], d["device"]): d for d in fleet["devices"]}
    total_alarms = fleet["totals"]["alarms"]
    assert total_alarms >= 3  # the seeded data must exercise the alarm path
    assert fleet["alarms_complete"]

    url = dashboard(InfluxSource(influx_url, influx_db), now)
    _wait_loaded(browser, f"{url}#range=all&site=lab&device=pump-1")
    assert browser.execute_script("return document.body.dataset.loaded") == "true"

    rows = browser.find_elements(By.CSS_SELECTOR, "#fleet-body tr.device-row")
    shown = {(r.get_attribute("data-site"), r.get_attribute("data-device")) for r in rows}
    assert shown == set(expected)
    for row in rows:
        key = (row.get_attribute("data-site"), row.get_attribute("data-device"))
        badge = row.find_element(By.CSS_SELECTOR, ".alarm-count").text
        assert int(badge) == expected[key]["alarms"], key
    assert browser.find_element(By.ID, "total-alarms").text == str(total_alarms)
    assert browser.find_element(By.ID, "total-devices").text == str(len(expected))
    assert not browser.find_element(By.ID, "banner").is_displayed()

    # the hostile name is text, never markup
    assert HOSTILE in browser.find_element(By.ID, "fleet-body").text
    assert browser.execute_script("return window.__xss === undefined")
    assert not browser.find_elements(By.CSS_SELECTOR, "#fleet-body img")

    # pump-1's detail: 8 channel charts, imputed points and σ bands on Pressure, alarm markers
    assert "pump-1" in browser.find_element(By.ID, "detail-title").text
    charts = browser.find_elements(By.CSS_SELECTOR, "#channel-charts .channel")
    assert len(charts) == 8
    pressure = browser.find_element(By.CSS_SELECTOR, '.channel[data-channel="Pressure"]')
    assert len(pressure.find_elements(By.CSS_SELECTOR, "circle.imputed")) == 52  # 40 + 12 ticks
    assert pressure.find_elements(By.CSS_SELECTOR, "polygon.band")
    current = browser.find_element(By.CSS_SELECTOR, '.channel[data-channel="Current"]')
    assert len(current.find_elements(By.CSS_SELECTOR, "circle.imputed")) == 12
    markers = browser.find_elements(By.CSS_SELECTOR, "#score-chart line.marker")
    assert len(markers) == expected[("lab", "pump-1")]["alarms"]
    alarm_rows = browser.find_elements(By.CSS_SELECTOR, "#alarm-body tr")
    assert len(alarm_rows) == total_alarms
    _screenshot(browser, artifacts / "dashboard-fleet.png")

    # a relative range around the data works too: the server clock sits just after pump-2's end
    pump2 = memory.extent("lab", "pump-2", Window())
    assert pump2 is not None
    now = datetime.fromtimestamp(pump2.last_ms / 1000, UTC) + timedelta(minutes=2)
    url = dashboard(InfluxSource(influx_url, influx_db), now)
    _wait_loaded(browser, f"{url}#range=15m&site=lab&device=pump-2")
    title = browser.find_element(By.ID, "detail-title").text
    assert "pump-2" in title
    assert browser.find_elements(By.CSS_SELECTOR, "#score-chart path.score")
    assert browser.find_element(By.ID, "range-label").text == "last 15 min"


def test_page_says_no_data_yet_on_an_empty_database(
    browser: Any, influx_url: str, unique_name: str, dashboard: Callable[..., str], artifacts: Path
) -> None:
    from selenium.webdriver.common.by import By

    url = dashboard(InfluxSource(influx_url, unique_name), datetime.now(UTC))
    _wait_loaded(browser, url)
    empty = browser.find_element(By.ID, "empty")
    assert empty.is_displayed()
    assert "No data yet" in empty.text
    assert unique_name in empty.text  # the hint names the database it looked in
    assert not browser.find_element(By.ID, "banner").is_displayed()
    _screenshot(browser, artifacts / "dashboard-empty.png")


def test_page_shows_an_error_banner_when_influxdb_is_down(
    browser: Any, free_port: int, dashboard: Callable[..., str], artifacts: Path
) -> None:
    from selenium.webdriver.common.by import By

    dead = InfluxSource(f"http://127.0.0.1:{free_port}", "gapwatch", attempts=1, timeout_s=2)
    url = dashboard(dead, datetime.now(UTC))
    _wait_loaded(browser, url)
    banner = browser.find_element(By.ID, "banner")
    assert banner.is_displayed()
    assert "unreachable" in banner.text
    assert "deploy/local/stack" in banner.text  # the hint says how to bring it back
    assert browser.execute_script("return document.body.dataset.loaded") == "error"
    _screenshot(browser, artifacts / "dashboard-influx-down.png")


def test_page_recovers_when_the_store_comes_back(
    browser: Any, dashboard: Callable[..., str], artifacts: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from pipeline.errors import StorageError

    store = MemorySource("flaky")
    store.write_lines(encode(skab_ticks(DATA_DIR)[:50]))
    url = dashboard(store, datetime(2020, 3, 2, tzinfo=UTC))
    _wait_loaded(browser, f"{url}#range=all")
    assert browser.find_elements(By.CSS_SELECTOR, "#fleet-body tr.device-row")

    store.failure = StorageError("InfluxDB http://influx:8086 is unreachable: timed out")
    browser.find_element(By.CSS_SELECTOR, 'button[data-range="all"]').click()
    banner = browser.find_element(By.ID, "banner")
    WebDriverWait(browser, WAIT_S).until(lambda d: banner.is_displayed())
    assert "timed out" in banner.text
    assert "stale" in browser.find_element(By.ID, "main").get_attribute("class")
    # the last good data stay on the page, dimmed, rather than a blank page
    assert browser.find_elements(By.CSS_SELECTOR, "#fleet-body tr.device-row")
    _screenshot(browser, artifacts / "dashboard-stale.png")

    store.failure = None
    browser.find_element(By.CSS_SELECTOR, 'button[data-range="all"]').click()
    WebDriverWait(browser, WAIT_S).until(lambda d: not banner.is_displayed())
    assert "stale" not in browser.find_element(By.ID, "main").get_attribute("class")


def test_a_token_protected_page_opens_with_its_token_url_and_keeps_it_out_of_the_address(
    browser: Any, dashboard: Callable[..., str], artifacts: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    token = "chromium-test-token-0123456789"
    store = MemorySource("locked")
    store.write_lines(encode(skab_ticks(DATA_DIR)[:50]))
    url = dashboard(
        store, datetime(2020, 3, 2, tzinfo=UTC), Access.for_bind("127.0.0.1", token=token)
    )
    browser.delete_all_cookies()
    browser.get(url)  # no token: 401 (Chromium offers its Basic-auth prompt), no page, no data
    assert not browser.find_elements(By.ID, "fleet-body")
    assert "app.js" not in browser.page_source
    _wait_loaded(browser, f"{url}?token={token}#range=all")
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#fleet-body tr.device-row")
    )
    assert browser.execute_script("return document.body.dataset.loaded") == "true"
    assert token not in browser.current_url  # redirected without it; the cookie carries access
    assert "/#range=all" in browser.current_url  # the fragment survived the redirect
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly
    browser.get(url)  # later visits need no token
    _wait_loaded(browser, f"{url}#range=all")
    assert browser.find_elements(By.CSS_SELECTOR, "#fleet-body tr.device-row")
    _screenshot(browser, artifacts / "dashboard-token.png")
