"""InfluxDB behind one small port: write line protocol, run InfluxQL.

Adapters implementing :class:`InfluxPort`:

- :class:`Influx1Client`: the InfluxDB 1.x HTTP API with the standard library (``/write`` with
  ``db``, ``rp``, ``precision=ms``; ``/query`` InfluxQL; basic auth), one keep-alive connection,
  optional gzip. Also speaks to the v1-compatible API of InfluxDB 2.x/3.x with a token.
- :class:`Influx2Client`: InfluxDB 2.x/3.x writes through ``influxdb-client`` (url, org, bucket,
  token); its queries use the v1-compatible ``/query`` endpoint (bucket as database; InfluxDB 2.x
  needs a DBRP mapping for that bucket, ``influx v1 dbrp create``).

The in-memory test double is :class:`pipeline.fakes.FakeInflux`.

Errors (all :class:`~pipeline.errors.StorageError`)::

    StorageError            fatal: wrong credentials, missing database, bad query
    ├── StorageUnavailable  transient: connection refused/reset, timeout, 5xx; retry later
    └── PointsRejected      400 on a write: some line can never be written (poison)
"""

from __future__ import annotations

import base64
import gzip as gzip_lib
import http.client
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

from pipeline.config import InfluxSettings
from pipeline.errors import PointsRejected, StorageError, StorageUnavailable

log = logging.getLogger(__name__)

__all__ = [
    "Influx1Client",
    "Influx2Client",
    "InfluxPort",
    "Series",
    "connect",
    "connect_reader",
    "quote_ident",
    "quote_literal",
]


@dataclass(frozen=True)
class Series:
    """One InfluxQL result series: rows of ``values`` under ``columns``."""

    name: str
    columns: tuple[str, ...]
    values: list[list[Any]]
    tags: dict[str, str] = field(default_factory=dict)


class InfluxPort(Protocol):
    def write(self, body: bytes) -> None:
        """Write newline-separated line protocol with millisecond timestamps."""

    def query(self, influxql: str) -> list[Series]:
        """Run one InfluxQL statement; times come back as epoch milliseconds."""

    def close(self) -> None: ...


def quote_ident(name: str) -> str:
    """An InfluxQL identifier in double quotes."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_literal(text: str) -> str:
    """An InfluxQL string literal in single quotes."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _parse_results(payloads: list[Any], influxql: str) -> list[Series]:
    merged: list[Series] = []
    for doc in payloads:
        if "error" in doc:
            raise StorageError(f"InfluxDB refused query {influxql[:200]!r}: {doc['error']}")
        for result in doc.get("results", []):
            if "error" in result:
                raise StorageError(f"InfluxDB refused query {influxql[:200]!r}: {result['error']}")
            for s in result.get("series", []):
                series = Series(
                    name=s.get("name", ""),
                    columns=tuple(s.get("columns", [])),
                    values=list(s.get("values", [])),
                    tags=dict(s.get("tags") or {}),
                )
                last = merged[-1] if merged else None
                if last is not None and (last.name, last.tags, last.columns) == (
                    series.name,
                    series.tags,
                    series.columns,
                ):
                    last.values.extend(series.values)
                else:
                    merged.append(series)
    return merged


class Influx1Client:
    """InfluxDB 1.x HTTP API (or the v1-compatible API of 2.x/3.x) over one keep-alive socket."""

    def __init__(
        self,
        url: str,
        database: str,
        *,
        retention_policy: str = "",
        username: str = "",
        password: str = "",
        token: str = "",
        gzip: bool = False,
        timeout_s: float = 30.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise StorageError(f"InfluxDB url {url!r} must look like http://host:8086")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 8086)
        self._prefix = parts.path.rstrip("/")
        self.url = url
        self.database = database
        self._rp = retention_policy
        self._gzip = gzip
        self._timeout = timeout_s
        self._headers: dict[str, str] = {}
        if token:
            self._headers["Authorization"] = f"Token {token}"
        elif username:
            cred = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {cred}"
        self._conn: http.client.HTTPConnection | None = None
        write_params = {"db": database, "precision": "ms"}
        if retention_policy:
            write_params["rp"] = retention_policy
        self._write_path = f"{self._prefix}/write?{urlencode(write_params)}"

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self._timeout)
        return self._conn

    def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        for attempt in (1, 2):
            reused = self._conn is not None
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers={**self._headers, **headers})
                resp = conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.close()
                return resp.status, data
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if (
                    reused
                    and attempt == 1
                    and isinstance(
                        exc, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError
                    )
                ):
                    continue  # the server closed an idle keep-alive socket: one fresh try
                raise StorageUnavailable(
                    f"InfluxDB at {self.url} unreachable: {type(exc).__name__}: {exc}"
                ) from exc
        raise StorageUnavailable(f"InfluxDB at {self.url} closed the connection twice")

    def write(self, body: bytes) -> None:
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self._gzip:
            body = gzip_lib.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        status, data = self._request("POST", self._write_path, body, headers)
        if status in (200, 204):
            return
        detail = _error_text(data)
        if status == 400:
            raise PointsRejected(f"InfluxDB rejected the write (400): {detail}")
        if status >= 500:
            raise StorageUnavailable(f"InfluxDB write failed ({status}): {detail}")
        hint = {
            401: "check the user/password or token",
            403: "the user needs WRITE on the database",
            404: f"create database {self.database!r} (CREATE DATABASE) or fix the name",
            413: "lower batch.max_points or raise InfluxDB's max-body-size",
        }.get(status, "see InfluxDB's log")
        raise StorageError(f"InfluxDB write failed ({status}): {detail}; {hint}")

    def query(self, influxql: str) -> list[Series]:
        params = {"q": influxql, "epoch": "ms", "chunked": "true", "chunk_size": "10000"}
        if self.database:
            params["db"] = self.database
        if self._rp:
            params["rp"] = self._rp
        body = urlencode(params).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        status, data = self._request("POST", f"{self._prefix}/query", body, headers)
        if status >= 500:
            raise StorageUnavailable(f"InfluxDB query failed ({status}): {_error_text(data)}")
        if status != 200:
            raise StorageError(
                f"InfluxDB refused query {influxql[:200]!r} ({status}): {_error_text(data)}"
            )
        try:
            docs = [json.loads(line) for line in data.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise StorageError(f"InfluxDB sent a query answer that is not JSON: {exc}") from exc
        return _parse_results(docs, influxql)

    def create_database(self, name: str | None = None) -> None:
        self.query(f"CREATE DATABASE {quote_ident(name or self.database)}")

    def drop_database(self, name: str | None = None) -> None:
        self.query(f"DROP DATABASE {quote_ident(name or self.database)}")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _error_text(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return text[:500]
    if isinstance(doc, dict):
        return str(doc.get("error") or doc.get("message") or doc)[:500]
    return text[:500]


class Influx2Client:
    """InfluxDB 2.x/3.x: writes through influxdb-client, InfluxQL through the v1-compatible API."""

    def __init__(
        self,
        url: str,
        org: str,
        bucket: str,
        token: str,
        *,
        gzip: bool = False,
        timeout_s: float = 30.0,
    ) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.url = url
        self._org = org
        self._bucket = bucket
        self._client = InfluxDBClient(
            url=url, token=token, org=org, timeout=int(timeout_s * 1000), enable_gzip=gzip
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._v1 = Influx1Client(url, bucket, token=token, timeout_s=timeout_s)

    def write(self, body: bytes) -> None:
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError as Urllib3Error

        try:
            self._write_api.write(
                bucket=self._bucket,
                org=self._org,
                record=body,
                write_precision=WritePrecision.MS,  # type: ignore[arg-type]
            )
        except ApiException as exc:
            status = int(exc.status or 0)
            detail = _error_text((exc.body or "").encode() if isinstance(exc.body, str) else b"")
            if status == 400:
                raise PointsRejected(f"InfluxDB rejected the write (400): {detail}") from exc
            if status >= 500 or status in (0, 429):
                raise StorageUnavailable(f"InfluxDB write failed ({status}): {detail}") from exc
            raise StorageError(
                f"InfluxDB write failed ({status}): {detail}; check org, bucket and token"
            ) from exc
        except (Urllib3Error, OSError) as exc:
            raise StorageUnavailable(f"InfluxDB at {self.url} unreachable: {exc}") from exc

    def query(self, influxql: str) -> list[Series]:
        return self._v1.query(influxql)

    def close(self) -> None:
        self._v1.close()
        self._write_api.close()  # type: ignore[no-untyped-call]
        self._client.close()  # type: ignore[no-untyped-call]


def connect_reader(settings: InfluxSettings) -> Influx1Client:
    """An InfluxQL client: the 1.x API, or the v1-compatible API of 2.x/3.x when a token is set."""
    return Influx1Client(
        settings.url,
        settings.database if settings.kind == "v1" else settings.bucket,
        retention_policy=settings.retention_policy,
        username=settings.username,
        password=settings.password,
        token=settings.token,
        gzip=False,
        timeout_s=settings.timeout_s,
    )


def connect(settings: InfluxSettings) -> Influx1Client | Influx2Client:
    """The adapter for ``settings.kind``."""
    if settings.kind == "v2":
        return Influx2Client(
            settings.url,
            settings.org,
            settings.bucket,
            settings.token,
            gzip=settings.gzip,
            timeout_s=settings.timeout_s,
        )
    return Influx1Client(
        settings.url,
        settings.database,
        retention_policy=settings.retention_policy,
        username=settings.username,
        password=settings.password,
        gzip=settings.gzip,
        timeout_s=settings.timeout_s,
    )
