"""InfluxDB 1.x adapter of :class:`~pipeline.dashboard.source.ReadingsSource` (InfluxQL over HTTP).

The queries come from :mod:`pipeline.dashboard.queries`; the parsing of InfluxDB's JSON answers
(:func:`parse_results`) is pure. Only :meth:`InfluxSource._post` and
:meth:`InfluxSource.ping` touch the network: ``POST /query`` with ``epoch=ms`` (several
statements separated by ``;`` in one request), retried with bounded backoff on connection
errors and 5xx answers, then surfaced as :class:`~pipeline.errors.StorageError`.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.dashboard import queries as q
from pipeline.dashboard.source import (
    AnomalyPoint,
    ChannelSeries,
    DeviceSeries,
    DeviceSummary,
    Extent,
    Window,
)
from pipeline.errors import StorageError

log = logging.getLogger(__name__)

__all__ = ["InfluxSource", "SeriesResult", "parse_results"]


@dataclass(frozen=True)
class SeriesResult:
    """One series of one statement's answer."""

    name: str
    tags: Mapping[str, str]
    columns: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]

    def rows(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=False)) for row in self.values]

    def key(self) -> tuple[str, str]:
        return self.tags.get("site", ""), self.tags.get("device", "")


def parse_results(
    payload: Any, statements: Sequence[str]
) -> tuple[list[list[SeriesResult]], list[str]]:
    """Series per statement, and the statements' error messages (empty when all succeeded)."""
    if not isinstance(payload, dict):
        raise StorageError(f"InfluxDB answered with unexpected JSON: {payload!r:.200}")
    if "error" in payload:
        raise StorageError(f"InfluxDB rejected the query: {payload['error']}")
    out: list[list[SeriesResult]] = [[] for _ in statements]
    errors: list[str] = []
    for result in payload.get("results", []):
        index = int(result.get("statement_id", 0))
        if not 0 <= index < len(out):
            raise StorageError(f"InfluxDB answered statement {index} of {len(out)}")
        if result.get("error") is not None:
            errors.append(f"{result['error']} (query: {statements[index]})")
            continue
        out[index] = [
            SeriesResult(
                name=str(s.get("name", "")),
                tags={str(k): str(v) for k, v in (s.get("tags") or {}).items()},
                columns=tuple(str(c) for c in s.get("columns", [])),
                values=tuple(tuple(row) for row in s.get("values", [])),
            )
            for s in result.get("series", [])
        ]
    return out, errors


def _about_missing_database(error: str) -> bool:
    # InfluxDB 1.x answers a batch on a missing database with "not executed" for each statement
    return error.startswith("database not found") or error.startswith("not executed")


def _float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    return float(value)


class InfluxSource:
    """Reads the dashboard's values from an InfluxDB 1.x database."""

    def __init__(
        self,
        url: str,
        database: str,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout_s: float = 10.0,
        attempts: int = 2,
        backoff_s: float = 0.25,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        self.url = url.rstrip("/")
        self.database = database
        self._auth: str | None = None
        if token:  # InfluxDB 2.x through its 1.x-compatible /query API
            self._auth = f"Token {token}"
        elif username:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
            self._auth = f"Basic {token}"
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._sleep = sleep

    def describe(self) -> str:
        return f"InfluxDB {self.url}, database {self.database!r}"

    # -- transport -------------------------------------------------------------------------

    def _request(self, path: str, body: bytes | None) -> tuple[int, bytes]:
        request = urllib.request.Request(f"{self.url}{path}", data=body)
        if body is not None:
            request.add_header("Content-Type", "application/x-www-form-urlencoded")
        if self._auth:
            request.add_header("Authorization", self._auth)
        last: Exception | None = None
        for attempt in range(1, self._attempts + 1):
            try:
                with urllib.request.urlopen(request, timeout=self._timeout_s) as resp:
                    return int(resp.status), bytes(resp.read())
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:300]
                if exc.code in (401, 403):
                    raise StorageError(
                        f"{self.describe()} refused the credentials (HTTP {exc.code}); "
                        "set --influx-user/--influx-password or --influx-token"
                    ) from exc
                if exc.code < 500:
                    return exc.code, detail.encode()
                last = exc
            except (urllib.error.URLError, OSError) as exc:
                last = exc
            log.warning(
                "dashboard.influx_retry",
                extra={
                    "url": self.url,
                    "attempt": attempt,
                    "of": self._attempts,
                    "error": str(last),
                },
            )
            if attempt < self._attempts:
                self._sleep(self._backoff_s * attempt)
        reason = getattr(last, "reason", last)
        raise StorageError(f"{self.describe()} is unreachable: {reason}") from last

    def _post(self, statements: Sequence[str]) -> list[list[SeriesResult]]:
        form = {"db": self.database, "q": ";\n".join(statements), "epoch": "ms"}
        status, body = self._request("/query", urllib.parse.urlencode(form).encode())
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StorageError(
                f"{self.describe()} answered HTTP {status} with non-JSON: {body[:200]!r}"
            ) from exc
        results, errors = parse_results(payload, statements)
        if not errors:
            return results
        if all(_about_missing_database(e) for e in errors) and not self._database_exists():
            return [[] for _ in statements]  # not created by the sink yet: nothing is stored
        raise StorageError(f"{self.describe()}: query failed: {errors[0]}")

    def _database_exists(self) -> bool:
        form = {"q": "SHOW DATABASES", "epoch": "ms"}
        status, body = self._request("/query", urllib.parse.urlencode(form).encode())
        try:
            (found,), errors = parse_results(json.loads(body), ["SHOW DATABASES"])
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
            raise StorageError(f"{self.describe()}: SHOW DATABASES answered HTTP {status}") from exc
        if errors:
            raise StorageError(f"{self.describe()}: SHOW DATABASES failed: {errors[0]}")
        return any(row and row[0] == self.database for s in found for row in s.values)

    def ping(self) -> None:
        status, _ = self._request("/ping", None)
        if status != 204:
            raise StorageError(f"{self.describe()}: GET /ping answered HTTP {status}")

    # -- ReadingsSource --------------------------------------------------------------------

    def channels(self) -> list[str]:
        """The channels stored in ``readings`` (numeric fields that are not reserved)."""
        (keys,) = self._post([q.field_keys_query()])
        return q.split_channels((str(r[0]), str(r[1])) for s in keys for r in s.values)

    def summaries(self, window: Window) -> list[DeviceSummary]:
        last, model, counts, first_in, last_in, flagged = self._post(q.fleet_queries(window))
        found: dict[tuple[str, str], dict[str, Any]] = {}

        def slot(series: SeriesResult) -> dict[str, Any]:
            return found.setdefault(series.key(), {})

        def first_value(series: SeriesResult, column: int) -> Any:
            return series.values[0][column] if series.values else None

        for s in last:
            slot(s)["last_seen_ms"] = first_value(s, 0)
        for s in model:
            version = first_value(s, 1)
            slot(s)["model_version"] = None if version is None else str(version)
        for s in counts:
            row = s.rows()[0] if s.values else {}
            slot(s)["ticks"] = int(row.get("ticks") or 0)
            slot(s)["imputation_rate"] = _float(row.get("imputed"))
        starts = {s.key(): first_value(s, 0) for s in first_in}
        ends = {s.key(): first_value(s, 0) for s in last_in}
        for s in flagged:
            slot(s)["flagged"] = int(first_value(s, 1) or 0)
        out = []
        for key, fields in sorted(found.items()):
            extent = None
            if starts.get(key) is not None and ends.get(key) is not None and fields.get("ticks"):
                extent = Extent(int(starts[key]), int(ends[key]), int(fields["ticks"]))
            seen = fields.get("last_seen_ms")
            out.append(
                DeviceSummary(
                    site=key[0],
                    device=key[1],
                    last_seen_ms=None if seen is None else int(seen),
                    model_version=fields.get("model_version"),
                    ticks=fields.get("ticks", 0),
                    imputation_rate=fields.get("imputation_rate"),
                    flagged=fields.get("flagged", 0),
                    extent=extent,
                )
            )
        return out

    def extent(self, site: str, device: str, window: Window) -> Extent | None:
        first, last, count = self._post(q.extent_queries(site, device, window))
        if not (first and first[0].values and last and last[0].values and count):
            return None
        ticks = int(count[0].values[0][1] or 0) if count[0].values else 0
        if ticks == 0:
            return None
        return Extent(int(first[0].values[0][0]), int(last[0].values[0][0]), ticks)

    def series(self, site: str, device: str, window: Window, interval_ms: int) -> DeviceSeries:
        channels = self.channels()
        (found,) = self._post([q.series_query(site, device, window, channels, interval_ms)])
        rows = [row for s in found for row in s.rows()]
        rows.sort(key=lambda r: int(r["time"]))
        chans = []
        for i, name in enumerate(channels):
            values = tuple(_float(r.get(f"v{i}")) for r in rows)
            if all(v is None for v in values):
                continue
            if interval_ms == 0:
                imputed = tuple(
                    1.0 if r.get(f"m{i}") is True or _float(r.get(f"s{i}")) is not None else 0.0
                    for r in rows
                )
            else:
                imputed = tuple(
                    (int(r.get(f"i{i}") or 0) / int(r.get(f"n{i}") or 1)) if r.get(f"n{i}") else 0.0
                    for r in rows
                )
            sigma = tuple(
                _float(r.get(f"s{i}")) if share > 0 else None
                for r, share in zip(rows, imputed, strict=True)
            )
            chans.append(ChannelSeries(name, values, imputed, sigma))
        return DeviceSeries(
            site=site,
            device=device,
            interval_ms=interval_ms,
            times=tuple(int(r["time"]) for r in rows),
            score=tuple(_float(r.get("score")) for r in rows),
            smoothed=tuple(_float(r.get("smoothed")) for r in rows),
            threshold=tuple(_float(r.get("threshold")) for r in rows),
            flagged=tuple(r.get("anomaly") is True for r in rows),
            channels=tuple(chans),
        )

    def anomalies(
        self, window: Window, site: str | None, device: str | None, limit: int
    ) -> list[AnomalyPoint]:
        (found,) = self._post([q.anomalies_query(window, site, device, limit)])
        return [
            AnomalyPoint(
                site=str(row.get("site") or ""),
                device=str(row.get("device") or ""),
                ts_ms=int(row["time"]),
                score=_float(row.get("score")),
                top_channels=q.parse_top_channels(row.get("top_channels")),
            )
            for s in found
            for row in s.rows()
        ]
