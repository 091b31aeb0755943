"""Who may read the dashboard: a Host-header allowlist and an optional token (pure, no I/O).

Every request is checked in this order:

1. **Host.** The ``Host`` header (port and a trailing dot dropped, case folded) must be in
   :attr:`Access.allowed_hosts`: by default ``localhost``, ``127.0.0.1``, ``::1`` and the
   address the server is bound to. Anything else is 421 Misdirected Request. This defeats DNS
   rebinding: a page on ``evil.example`` whose name resolves to 127.0.0.1 sends
   ``Host: evil.example`` and reads nothing. ``*`` allows every host; ``.example.com`` allows
   that domain and its subdomains.
2. **Token** (when :attr:`Access.token` is set; else every allowed-host request passes). Any of:
   ``Authorization: Bearer <token>``; HTTP Basic with the token as the password (any user
   name: the browser's own login prompt); ``?token=<token>`` on any URL, which also sets an
   HttpOnly, SameSite=Strict cookie and redirects a page URL to itself without the token (so
   it leaves the address bar and the history); that cookie afterwards. The cookie holds an
   HMAC of the token, not the token. Anything else is 401 with a ``WWW-Authenticate`` challenge.

Tokens are compared in constant time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qsl, urlencode

__all__ = [
    "COOKIE",
    "LOOPBACK_HOSTS",
    "Access",
    "Verdict",
    "host_name",
    "is_loopback",
]

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
COOKIE = "gapwatch_dashboard"
_WILDCARD_BINDS = {"", "0.0.0.0", "::"}
CHALLENGE = 'Basic realm="gapwatch dashboard", charset="UTF-8"'


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1): this machine only."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str | None:
    """``Host`` header → the lower-case name without port or trailing dot; None if malformed."""
    value = header.strip().lower()
    if not value or any(c.isspace() or c in "/\\@?#" for c in value):
        return None
    if value.startswith("["):  # [v6]:port
        end = value.find("]")
        if end < 0 or (value[end + 1 :] and not value[end + 1 :].startswith(":")):
            return None
        return value[1:end] or None
    if value.count(":") > 1:
        return None  # a bare IPv6 address must be bracketed
    name = value.partition(":")[0].rstrip(".")
    return name or None


@dataclass(frozen=True)
class Verdict:
    """What to do with one request: ``status`` 0 serves it (``query`` is its query without the
    token); otherwise answer ``status`` with ``reason``. ``set_cookie``: a Set-Cookie value to
    send; ``redirect``: answer 303 to the same path with ``query``."""

    status: int = 0
    reason: str = ""
    query: str = ""
    set_cookie: str = ""
    redirect: bool = False
    challenge: str = ""


@dataclass(frozen=True)
class Access:
    """The dashboard's access rules (see the module docstring)."""

    token: str = ""
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS

    @classmethod
    def for_bind(
        cls, bind_host: str, *, token: str = "", extra_hosts: tuple[str, ...] = ()
    ) -> Access:
        """The default allowlist (loopback names, the bind address) plus ``extra_hosts``."""
        hosts = list(LOOPBACK_HOSTS)
        bind = bind_host.strip().strip("[]").lower()
        if bind not in _WILDCARD_BINDS:
            hosts.append(bind)
        hosts += [h.strip().lower().rstrip(".") for h in extra_hosts if h.strip()]
        return cls(token=token, allowed_hosts=tuple(dict.fromkeys(hosts)))

    def host_allowed(self, header: str | None) -> bool:
        if "*" in self.allowed_hosts:
            return True
        name = host_name(header or "")
        if name is None:
            return False
        for allowed in self.allowed_hosts:
            if allowed.startswith("."):
                if name == allowed[1:] or name.endswith(allowed):
                    return True
            elif name == allowed:
                return True
        return False

    def cookie_value(self) -> str:
        mac = hmac.new(self.token.encode(), b"gapwatch-dashboard-cookie-v1", hashlib.sha256)
        return mac.hexdigest()

    def check(
        self,
        *,
        host: str | None,
        authorization: str | None = None,
        cookie: str | None = None,
        query: str = "",
        page: bool = False,
    ) -> Verdict:
        """The verdict on one request; ``page``: a URL a browser shows (redirect target)."""
        if not self.host_allowed(host):
            shown = (host or "")[:100]
            return Verdict(
                421,
                f"Host {shown!r} is not served here; add it to the dashboard's allowed_hosts "
                "(GAPWATCH_DASHBOARD__ALLOWED_HOSTS) if this name is really yours",
            )
        params = parse_qsl(query, keep_blank_values=True)
        rest = urlencode([(k, v) for k, v in params if k != "token"])
        if not self.token:
            return Verdict(query=rest)
        given = [v for k, v in params if k == "token"]
        if given:
            if not self._matches(given[-1]):
                return Verdict(401, "wrong token", challenge=CHALLENGE)
            set_cookie = f"{COOKIE}={self.cookie_value()}; Path=/; HttpOnly; SameSite=Strict"
            return Verdict(query=rest, set_cookie=set_cookie, redirect=page)
        if self._header_ok(authorization or "") or self._cookie_ok(cookie or ""):
            return Verdict(query=rest)
        return Verdict(
            401,
            "this dashboard needs its token: open it as /?token=<token>, or send "
            "Authorization: Bearer <token> (or Basic auth with the token as the password)",
            challenge=CHALLENGE,
        )

    def _matches(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self.token.encode())

    def _header_ok(self, header: str) -> bool:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer":
            return self._matches(value.strip())
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return False
            return self._matches(decoded.partition(":")[2])
        return False

    def _cookie_ok(self, header: str) -> bool:
        try:
            jar = SimpleCookie(header)
        except CookieError:
            return False
        morsel = jar.get(COOKIE)
        return morsel is not None and hmac.compare_digest(
            morsel.value.encode(), self.cookie_value().encode()
        )
