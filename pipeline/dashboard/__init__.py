"""The built-in dashboard: a local web page over the readings and alarms stored in InfluxDB.

Layers, inside out::

    queries.py        pure InfluxQL builders (and the storage schema they read)
    source.py         the values (DeviceSummary, DeviceSeries…) and the ReadingsSource port
    influx_source.py  the InfluxDB 1.x adapter (InfluxQL over HTTP, stdlib only)
    memory_source.py  the in-memory adapter, the test double of the port
    api.py            JSON API handlers: parameters in, status and body out (clock injected)
    server.py         stdlib ThreadingHTTPServer: static page + /api/*
    index.html, app.js, style.css   the page; charts drawn in SVG by hand, no external library

Run it with ``gapwatch dashboard --influx URL --db NAME`` (see ``pipeline/cli/dashboard.py``).
"""

from pipeline.dashboard.api import DashboardApi
from pipeline.dashboard.influx_source import InfluxSource
from pipeline.dashboard.memory_source import MemorySource
from pipeline.dashboard.server import DashboardServer, serve_in_thread
from pipeline.dashboard.source import ReadingsSource

__all__ = [
    "DashboardApi",
    "DashboardServer",
    "InfluxSource",
    "MemorySource",
    "ReadingsSource",
    "serve_in_thread",
]
