"""The built-in dashboard's HTTP server: stdlib ``ThreadingHTTPServer``, no framework, no CDN.

``/`` serves ``index.html``; ``/app.js`` and ``/style.css`` come from this package's data (read
once at start, so a broken install fails at start, not at the first visitor). ``/api/…`` goes
to :class:`~pipeline.dashboard.api.DashboardApi`. Every response carries a Content-Security-
Policy of ``'self'`` only: the page can load nothing from the internet and runs no inline script.
Before any of that, :class:`~pipeline.dashboard.access.Access` checks the ``Host`` header (421
for a name not in the allowlist: DNS rebinding) and, when a token is configured, the token (401).
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

from pipeline.dashboard.access import Access, Verdict
from pipeline.dashboard.api import DashboardApi

log = logging.getLogger(__name__)

__all__ = ["ASSETS", "DashboardServer", "load_assets", "serve_in_thread"]

ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def load_assets() -> dict[str, tuple[bytes, str]]:
    """The static files, by URL path, read from the installed package."""
    root = resources.files("pipeline.dashboard")
    return {path: ((root / name).read_bytes(), ctype) for path, (name, ctype) in ASSETS.items()}


class DashboardServer(ThreadingHTTPServer):
    """A threading HTTP server that knows its API and assets."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        api: DashboardApi,
        assets: dict[str, tuple[bytes, str]] | None = None,
        access: Access | None = None,
    ) -> None:
        self.api = api
        self.assets = load_assets() if assets is None else assets
        self.access = Access.for_bind(address[0]) if access is None else access
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/"


class _Handler(BaseHTTPRequestHandler):
    server_version = "gapwatch-dashboard"
    protocol_version = "HTTP/1.1"
    _cookie = ""  # a Set-Cookie value for the response being sent (``?token=`` accepted)

    def do_GET(self) -> None:
        self._serve(with_body=True)

    def do_HEAD(self) -> None:
        self._serve(with_body=False)

    def _serve(self, *, with_body: bool) -> None:
        server = cast(DashboardServer, self.server)
        parts = urlsplit(self.path)
        is_api = parts.path.startswith("/api/")
        verdict = server.access.check(
            host=self.headers.get("Host"),
            authorization=self.headers.get("Authorization"),
            cookie=self.headers.get("Cookie"),
            query=parts.query,
            page=not is_api,
        )
        if verdict.status or verdict.redirect:
            self._refuse(verdict, parts.path, is_api, with_body)
            return
        self._cookie = verdict.set_cookie
        if is_api:
            params = dict(parse_qsl(verdict.query, keep_blank_values=True))
            try:
                answer = server.api.handle(parts.path, params)
                status, body = answer.status, answer.body
            except Exception as exc:  # an unexpected bug must still answer JSON, and be logged
                log.exception("dashboard.api_failed", extra={"path": parts.path})
                status = 500
                body = {"error": f"internal error: {type(exc).__name__}: {exc}"}
            if status >= 500:
                log.warning(
                    "dashboard.api_error",
                    extra={"path": parts.path, "status": status, "error": body.get("error")},
                )
            payload = json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
            self._send(status, payload, "application/json", with_body, cache="no-store")
            return
        asset = server.assets.get(parts.path)
        if asset is None:
            self._send(
                404, b"not found\n", "text/plain; charset=utf-8", with_body, cache="no-store"
            )
            return
        self._send(200, asset[0], asset[1], with_body, cache="no-cache")

    def _refuse(self, verdict: Verdict, path: str, is_api: bool, with_body: bool) -> None:
        """Answer a refused request (421, 401) or the redirect that drops ``?token=``."""
        headers: dict[str, str] = {}
        if verdict.redirect:
            status, text = 303, "see the address without the token\n"
            headers["Location"] = path + (f"?{verdict.query}" if verdict.query else "")
            self._cookie = verdict.set_cookie
        else:
            status, text = verdict.status, verdict.reason + "\n"
            self._cookie = ""
            if verdict.challenge:
                headers["WWW-Authenticate"] = verdict.challenge
            log.info(
                "dashboard.refused",
                extra={"status": status, "client": self.address_string(), "path": path},
            )
        if is_api and not verdict.redirect:
            body = json.dumps({"error": verdict.reason}).encode()
            ctype = "application/json"
        else:
            body, ctype = text.encode(), "text/plain; charset=utf-8"
        self._send(status, body, ctype, with_body, cache="no-store", extra=headers)

    def _send(
        self,
        status: int,
        body: bytes,
        ctype: str,
        with_body: bool,
        *,
        cache: str,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(HTTPStatus(status))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        if getattr(self, "_cookie", ""):
            self.send_header("Set-Cookie", self._cookie)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(
            "dashboard.request", extra={"client": self.address_string(), "line": format % args}
        )


def serve_in_thread(server: DashboardServer) -> threading.Thread:
    """Run ``server.serve_forever`` in a daemon thread (tests, embedding); stop with shutdown()."""
    thread = threading.Thread(target=server.serve_forever, name="gapwatch-dashboard", daemon=True)
    thread.start()
    return thread
