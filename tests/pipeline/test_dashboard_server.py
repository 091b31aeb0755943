"""The dashboard's HTTP server on loopback, with the in-memory source."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import pytest

from pipeline.dashboard.api import ApiResponse, DashboardApi
from pipeline.dashboard.memory_source import MemorySource
from pipeline.dashboard.server import ASSETS, DashboardServer, serve_in_thread

NOW = datetime(2024, 5, 1, tzinfo=UTC)


@pytest.fixture
def server() -> Iterator[DashboardServer]:
    store = MemorySource("test")
    store.write_lines(
        "readings,site=lab,device=p1 t=1.0,t_imputed=false,imputed_frac=0.0,threshold=2.0,"
        'anomaly=false,warmup=false,revision=0i,model_version="v1",model="m" 1714521600000\n'
    )
    srv = DashboardServer(("127.0.0.1", 0), DashboardApi(store, clock=lambda: NOW))
    serve_in_thread(srv)
    yield srv
    srv.shutdown()
    srv.server_close()


def get(srv: DashboardServer, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(str(host), port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_page_and_assets_are_served_with_a_strict_csp(server: DashboardServer) -> None:
    status, headers, body = get(server, "/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert b'<script src="app.js" defer></script>' in body
    csp = headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert headers["x-content-type-options"] == "nosniff"
    for path, ctype in (("/app.js", "text/javascript"), ("/style.css", "text/css")):
        status, headers, body = get(server, path)
        assert status == 200 and headers["content-type"].startswith(ctype)
        assert len(body) > 1000


def test_api_answers_json(server: DashboardServer) -> None:
    status, headers, body = get(server, "/api/fleet?range=all")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    data = json.loads(body)
    assert [d["device"] for d in data["devices"]] == ["p1"]
    status, _, body = get(server, "/api/fleet?range=nope")
    assert status == 400
    assert "range='nope'" in json.loads(body)["error"]


def test_unknown_paths_are_404_and_nothing_outside_the_assets_is_served(
    server: DashboardServer,
) -> None:
    for path in ("/nope", "/../pyproject.toml", "/%2e%2e/pyproject.toml", "/server.py"):
        status, _, _ = get(server, path)
        assert status == 404, path
    status, _, body = get(server, "/api/nope")
    assert status == 404 and "hint" in json.loads(body)


def test_head_sends_headers_only(server: DashboardServer) -> None:
    status, headers, body = get(server, "/", method="HEAD")
    assert status == 200 and body == b""
    assert int(headers["content-length"]) > 0


def test_a_bug_in_a_handler_still_answers_json_500(
    server: DashboardServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(path: str, params: Any) -> ApiResponse:
        raise KeyError("boom")

    monkeypatch.setattr(server.api, "handle", broken)
    status, _, body = get(server, "/api/fleet")
    assert status == 500
    assert "KeyError" in json.loads(body)["error"]


def test_assets_load_nothing_from_outside_and_never_use_inner_html() -> None:
    root = resources.files("pipeline.dashboard")
    for name, _ in set(ASSETS.values()):
        text = (root / name).read_text()
        urls = set(re.findall(r"https?://[^\s\"')]+", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, (name, urls)  # a namespace, not a fetch
        sinks = re.findall(
            r"\.(?:inner|outer)HTML\s*=|insertAdjacentHTML|document\.write|eval\(", text
        )
        assert not sinks, (name, sinks)
