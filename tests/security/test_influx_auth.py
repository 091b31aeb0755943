"""InfluxDB 1.x with ``auth-enabled = true`` (own instance): the pipeline's client authenticates,
and a wrong or missing credential is a clear StorageError that never contains the secret.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import pytest

from pipeline.config import InfluxSettings, SinkConfig
from pipeline.errors import StorageError
from pipeline.influx import Influx1Client, connect

pytestmark = pytest.mark.integration


def _chain_text(exc: BaseException) -> str:
    """Everything a log handler could print about an exception, causes included."""
    return "".join(traceback.format_exception(exc)) + repr(exc)


def test_missing_credentials_are_refused_with_401(sec_influx: Any) -> None:
    client = Influx1Client(sec_influx.url, "gapwatch")
    try:
        with pytest.raises(StorageError) as err:
            client.query("SHOW DATABASES")
    finally:
        client.close()
    assert "401" in str(err.value)


def test_wrong_password_is_a_clear_error_without_the_secret(
    sec_influx: Any, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-" + sec_influx.password
    settings = InfluxSettings(
        url=sec_influx.url, database="gapwatch", username=sec_influx.admin, password=wrong
    )
    client = connect(settings)
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(StorageError) as err:
            client.write(b"readings,site=a,device=b x=1 1764000000000")
    finally:
        client.close()
    text = _chain_text(err.value)
    assert "401" in str(err.value)
    assert "user/password" in str(err.value), "the error should say what to fix"
    for secret in (wrong, sec_influx.password):
        assert secret not in text
        assert secret not in caplog.text
    assert type(err.value).__name__ == "StorageError", "wrong credentials are fatal, not retried"


def test_right_credentials_write_and_read_back(sec_influx: Any) -> None:
    client = Influx1Client(
        sec_influx.url, "sec_ok", username=sec_influx.admin, password=sec_influx.password
    )
    try:
        client.create_database()
        client.write(b"readings,site=a,device=b x=1.5 1764000000000")
        series = client.query('SELECT "x" FROM "readings"')
    finally:
        client.close()
    assert series, "the point written with credentials was not read back"
    assert [row[-1] for row in series[0].values] == [1.5]


def test_sink_config_redacts_the_influx_password() -> None:
    config = SinkConfig(influx=InfluxSettings(username="u", password="hunter2-secret"))
    assert "hunter2-secret" not in repr(config.redacted())
    assert config.redacted()["influx"]["password"] == "***"
