"""The InfluxDB adapters at the HTTP level, against a scripted local HTTP server.

The real InfluxDB 1.x is exercised by the integration tests; InfluxDB 2.x is not available on
this machine, so its adapter is checked here for the requests it sends and how it reads the
answers (the endpoints and headers of the documented /api/v2/write and v1-compatible /query).
"""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from pipeline.config import InfluxSettings
from pipeline.errors import StorageError
from pipeline.influx import (
    Influx1Client,
    Influx2Client,
    PointsRejected,
    StorageUnavailable,
    connect_reader,
)


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Script:
    answers: list[tuple[int, bytes]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            parts = urlsplit(self.path)
            script.seen.append(
                Seen(self.command, parts.path, parse_qs(parts.query), dict(self.headers), body)
            )
            status, answer = script.answers.pop(0) if script.answers else (204, b"")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_POST = _serve

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    finally:
        httpd.shutdown()
        httpd.server_close()


LINE = b"readings,site=s,device=d x=1.5 1700000000000\n"


def test_v1_write_uses_db_rp_ms_basic_auth_gzip_and_one_connection(
    server: tuple[str, Script],
) -> None:
    url, script = server
    client = Influx1Client(url, "plant", retention_policy="raw", username="u", password="p",
                           gzip=True)  # fmt: skip
    client.write(LINE)
    client.write(LINE)
    first, second = script.seen
    assert first.path == "/write"
    assert first.query == {"db": ["plant"], "rp": ["raw"], "precision": ["ms"]}
    assert first.headers["Authorization"] == "Basic dTpw"
    assert first.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(first.body) == LINE
    assert second.body and client._conn is not None  # the same keep-alive connection
    client.close()


@pytest.mark.parametrize(
    ("status", "error", "match"),
    [
        (400, PointsRejected, "partial write"),
        (500, StorageUnavailable, "timeout"),
        (503, StorageUnavailable, "timeout"),
        (401, StorageError, "user/password or token"),
        (404, StorageError, "CREATE DATABASE"),
    ],
)
def test_v1_write_errors_are_classified(
    server: tuple[str, Script], status: int, error: type[Exception], match: str
) -> None:
    url, script = server
    detail = "partial write: x" if status == 400 else "timeout"
    script.answers.append((status, json.dumps({"error": detail}).encode()))
    with pytest.raises(error, match=match):
        Influx1Client(url, "plant").write(LINE)


def test_unreachable_influx_is_transient() -> None:
    with pytest.raises(StorageUnavailable, match="unreachable"):
        Influx1Client("http://127.0.0.1:1", "plant", timeout_s=1).write(LINE)


def test_v1_query_merges_chunks_and_reports_errors(server: tuple[str, Script]) -> None:
    url, script = server
    chunk = {"results": [{"statement_id": 0, "series": [
        {"name": "readings", "tags": {"device": "d"}, "columns": ["time", "x"],
         "values": [[1, 1.5]], "partial": True}], "partial": True}]}  # fmt: skip
    rest = {"results": [{"statement_id": 0, "series": [
        {"name": "readings", "tags": {"device": "d"}, "columns": ["time", "x"],
         "values": [[2, 2.5]]}]}]}  # fmt: skip
    script.answers.append((200, (json.dumps(chunk) + "\n" + json.dumps(rest) + "\n").encode()))
    client = Influx1Client(url, "plant", token="tok")
    [series] = client.query('SELECT "x" FROM "readings"')
    assert series.values == [[1, 1.5], [2, 2.5]]
    assert series.tags == {"device": "d"}
    seen = script.seen[0]
    assert seen.headers["Authorization"] == "Token tok"
    form = parse_qs(seen.body.decode())
    assert form["db"] == ["plant"] and form["epoch"] == ["ms"] and form["chunked"] == ["true"]
    script.answers.append((200, b'{"results":[{"statement_id":0,"error":"database not found"}]}'))
    with pytest.raises(StorageError, match="database not found"):
        client.query("SELECT 1")


def test_v2_writes_through_influxdb_client_and_reads_v1_compatible(
    server: tuple[str, Script],
) -> None:
    url, script = server
    client = Influx2Client(url, "acme", "sensors", "tok2")
    client.write(LINE)
    write = script.seen[0]
    assert write.path == "/api/v2/write"
    assert write.query["org"] == ["acme"]
    assert write.query["bucket"] == ["sensors"]
    assert write.query["precision"] == ["ms"]
    assert write.headers["Authorization"] == "Token tok2"
    assert write.body == LINE
    script.answers.append((400, b'{"code":"invalid","message":"unable to parse"}'))
    with pytest.raises(PointsRejected, match="unable to parse"):
        client.write(LINE)
    script.answers.append((503, b'{"code":"unavailable","message":"busy"}'))
    with pytest.raises(StorageUnavailable):
        client.write(LINE)
    script.answers.append((200, b'{"results":[{"statement_id":0}]}'))
    assert client.query("SHOW MEASUREMENTS") == []
    assert script.seen[-1].path == "/query"
    assert parse_qs(script.seen[-1].body.decode())["db"] == ["sensors"]
    client.close()


def test_reader_for_v2_settings_queries_the_bucket_with_the_token() -> None:
    reader = connect_reader(
        InfluxSettings(kind="v2", url="http://h:8086", org="o", bucket="b", token="t")
    )
    assert reader.database == "b"
