"""Who may read the dashboard: the Host allowlist (DNS rebinding) and the optional token, as
rules (``Access``) and through the real HTTP server on loopback; the CLI refuses to serve
beyond loopback without a login."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from pipeline.cli.dashboard import build_parser, load_config
from pipeline.dashboard.access import COOKIE, Access, host_name, is_loopback
from pipeline.dashboard.api import DashboardApi
from pipeline.dashboard.memory_source import MemorySource
from pipeline.dashboard.server import DashboardServer, serve_in_thread
from pipeline.errors import ConfigError

TOKEN = "s3cret-token-0123456789"
NOW = datetime(2024, 5, 1, tzinfo=UTC)


# ----------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost:8050", "localhost"),
        ("LOCALHOST", "localhost"),
        ("127.0.0.1:8050", "127.0.0.1"),
        ("[::1]:8050", "::1"),
        ("[::1]", "::1"),
        ("gw-7.plant.lan.:8050", "gw-7.plant.lan"),
        ("", None),
        ("::1", None),  # IPv6 must be bracketed
        ("[::1]x", None),
        ("evil.example/x", None),
        ("user@localhost", None),
        ("local host", None),
    ],
)
def test_host_header_parsing(header: str, name: str | None) -> None:
    assert host_name(header) == name


def test_default_allowlist_is_loopback_plus_the_bind_address() -> None:
    assert Access.for_bind("0.0.0.0").allowed_hosts == ("localhost", "127.0.0.1", "::1")
    access = Access.for_bind("10.0.0.5", extra_hosts=("GW-7.plant.lan", ".corp.example"))
    for ok in ("localhost:8050", "127.0.0.1", "[::1]:1", "10.0.0.5:8050", "gw-7.plant.lan"):
        assert access.check(host=ok).status == 0, ok
    assert access.check(host="a.b.corp.example").status == 0
    assert access.check(host="corp.example").status == 0
    for bad in ("evil.example", "127.0.0.1.evil.example", "xcorp.example", None, "10.0.0.6"):
        verdict = access.check(host=bad)
        assert verdict.status == 421, bad
        assert "allowed_hosts" in verdict.reason
    assert Access(allowed_hosts=("*",)).check(host="anything.example").status == 0


def test_without_a_token_an_allowed_host_is_enough() -> None:
    verdict = Access.for_bind("127.0.0.1").check(host="localhost", query="range=all&token=x")
    assert verdict.status == 0 and verdict.query == "range=all"  # token never reaches the API


def test_the_token_in_each_form_and_the_cookie_it_leaves() -> None:
    access = Access.for_bind("127.0.0.1", token=TOKEN)
    host = "127.0.0.1:8050"
    assert access.check(host=host).status == 401
    assert access.check(host=host, authorization=f"Bearer {TOKEN}").status == 0
    assert access.check(host=host, authorization="Bearer nope").status == 401
    basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    assert access.check(host=host, authorization=f"Basic {basic}").status == 0
    wrong = base64.b64encode(b"anyone:nope").decode()
    assert access.check(host=host, authorization=f"Basic {wrong}").status == 401
    assert access.check(host=host, authorization="Basic !!!").status == 401
    assert access.check(host=host, authorization=TOKEN).status == 401  # a scheme is required

    page = access.check(host=host, query=f"token={TOKEN}&range=all", page=True)
    assert page.status == 0 and page.redirect and page.query == "range=all"
    assert "HttpOnly" in page.set_cookie and "SameSite=Strict" in page.set_cookie
    assert TOKEN not in page.set_cookie  # the cookie holds an HMAC of the token
    cookie = page.set_cookie.split(";")[0]
    assert access.check(host=host, cookie=f"other=1; {cookie}").status == 0
    assert access.check(host=host, cookie=f"{COOKIE}=forged").status == 401
    assert access.check(host=host, cookie='bad"cookie').status == 401
    api = access.check(host=host, query=f"token={TOKEN}", page=False)
    assert api.status == 0 and not api.redirect
    assert access.check(host=host, query="token=nope", page=True).status == 401
    # a good token from a rebinding page still meets the Host check first
    assert access.check(host="evil.example", authorization=f"Bearer {TOKEN}").status == 421


def test_loopback_detection() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.5", "gw-7.plant.lan", ""):
        assert not is_loopback(host), host


# ----------------------------------------------------------------------------- server


def _server(access: Access | None) -> DashboardServer:
    store = MemorySource("test")
    store.write_lines(
        "readings,site=lab,device=p1 t=1.0,t_imputed=false,imputed_frac=0.0,threshold=2.0,"
        'anomaly=false,warmup=false,revision=0i,model_version="v1",model="m" 1714521600000\n'
    )
    srv = DashboardServer(("127.0.0.1", 0), DashboardApi(store, clock=lambda: NOW), access=access)
    serve_in_thread(srv)
    return srv


@pytest.fixture
def locked() -> Iterator[DashboardServer]:
    srv = _server(Access.for_bind("127.0.0.1", token=TOKEN))
    yield srv
    srv.shutdown()
    srv.server_close()


def request(
    srv: DashboardServer, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(str(host), port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_a_rebinding_host_gets_421_from_the_real_server() -> None:
    srv = _server(None)  # the default: loopback names and the bind address, no token
    try:
        port = srv.server_address[1]
        status, _, body = request(srv, "/api/fleet?range=all", {"Host": f"evil.example:{port}"})
        assert status == 421 and "allowed_hosts" in json.loads(body)["error"]
        status, _, body = request(srv, "/", {"Host": "evil.example"})
        assert status == 421 and b"<html" not in body
        status, _, body = request(srv, "/api/fleet?range=all", {"Host": f"localhost:{port}"})
        assert status == 200 and json.loads(body)["devices"]
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_locked_server_answers_only_with_the_token(locked: DashboardServer) -> None:
    status, headers, body = request(locked, "/api/fleet?range=all")
    assert status == 401 and "token" in json.loads(body)["error"]
    assert headers["www-authenticate"].startswith("Basic ")
    status, _, body = request(locked, "/")
    assert status == 401 and b"<html" not in body
    status, _, body = request(locked, "/api/fleet?range=all", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and [d["device"] for d in json.loads(body)["devices"]] == ["p1"]
    status, _, body = request(locked, f"/api/fleet?range=all&token={TOKEN}")
    assert status == 200 and json.loads(body)["devices"]


def test_the_browser_flow_token_url_then_cookie(locked: DashboardServer) -> None:
    status, headers, _ = request(locked, f"/?token={TOKEN}&x=1")
    assert status == 303 and headers["location"] == "/?x=1"
    cookie = headers["set-cookie"].split(";")[0]
    assert TOKEN not in cookie
    status, _, body = request(locked, "/", {"Cookie": cookie})
    assert status == 200 and b"app.js" in body
    status, _, body = request(locked, "/api/fleet?range=all", {"Cookie": cookie})
    assert status == 200 and json.loads(body)["devices"]


# ----------------------------------------------------------------------------- CLI


def config(env: dict[str, str], argv: list[str] | None = None) -> object:
    return load_config(build_parser().parse_args(argv or []), env)


def test_beyond_loopback_needs_a_token_or_an_explicit_allow_anonymous() -> None:
    with pytest.raises(ConfigError) as info:
        config({}, ["--host", "0.0.0.0"])
    message = str(info.value)
    assert "GAPWATCH_DASHBOARD__AUTH_TOKEN" in message and "allow_anonymous" in message
    config({"GAPWATCH_DASHBOARD__AUTH_TOKEN": TOKEN}, ["--host", "0.0.0.0"])
    config({"GAPWATCH_DASHBOARD__ALLOW_ANONYMOUS": "true"}, ["--host", "0.0.0.0"])
    config({}, ["--host", "127.0.0.1"])
    config({}, ["--host", "localhost"])
    with pytest.raises(ConfigError, match="at least 16"):
        config({"GAPWATCH_DASHBOARD__AUTH_TOKEN": "short"})
    with pytest.raises(ConfigError, match="allowed_hosts entry"):
        config({"GAPWATCH_DASHBOARD__ALLOWED_HOSTS": "http://x/"})
    cfg = config({"GAPWATCH_DASHBOARD__ALLOWED_HOSTS": "gw-7.plant.lan, .corp.example"})
    assert cfg.allowed_hosts == ("gw-7.plant.lan", ".corp.example")  # type: ignore[attr-defined]
