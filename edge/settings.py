"""The one configuration loader of gapwatch's services (agent, sink, dashboard).

Every service builds one frozen dataclass tree the same way, lowest precedence first:

1. the dataclasses' defaults;
2. a TOML file (``--config``);
3. environment variables ``<PREFIX><SECTION>__<KEY>=<value>`` (one grammar for all:
   ``GAPWATCH_AGENT__MQTT__PORT=1884``, ``GAPWATCH_SINK__INFLUX__URL=http://db:8086``,
   ``GAPWATCH_DASHBOARD__INFLUX__DATABASE=plant``; section names nest with ``__``);
4. ``--set section.key=value`` where a command offers it.

Values from the environment and ``--set`` are text, typed by the field they set:

- a string field takes the text **verbatim** (``PASSWORD=0x1F`` is the string ``0x1F``, never
  the number 31); only a complete TOML string literal (``"..."`` or ``'...'``) is unquoted;
- integers and numbers are parsed (NaN is refused); booleans are ``true``/``false`` (also
  ``1``/``0``, ``yes``/``no``, ``on``/``off``);
- a list of strings is a TOML array (``["a", "b"]``) or comma-separated text (``a, b``);
- tables and lists of tables (``[[devices]]``) are TOML inline values.

Every problem is collected and reported at once, each naming the field (and the environment
variable it came from) and the fix: an unknown key says which known key it is close to.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edge.errors import ConfigError

__all__ = ["EnvValue", "build", "env_overrides", "load", "read_toml"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class EnvValue(str):
    """Text given in an environment variable or ``--set``; typed by the field it sets."""

    source: str

    def __new__(cls, text: str, source: str) -> EnvValue:
        value = super().__new__(cls, text)
        value.source = source
        return value


def read_toml(path: str | Path, *, example: str) -> dict[str, Any]:
    """The TOML file as a dict; ConfigError (pointing at ``example``) when it is unusable."""
    where = f"config file {str(path)!r}"
    try:
        with Path(path).open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{where} not found; pass an existing --config (see {example})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{where} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read ({exc.strerror}); pass a readable file") from exc


def env_overrides(env: Mapping[str, str], prefix: str) -> list[tuple[str, EnvValue]]:
    """``{prefix}MQTT__PORT=1884`` → ``[("mqtt.port", EnvValue("1884"))]``, sorted by name."""
    out = []
    for name in sorted(env):
        if name.upper().startswith(prefix.upper()):
            dotted = ".".join(p.lower() for p in name[len(prefix) :].split("__"))
            out.append((dotted, EnvValue(env[name], name)))
    return out


def _assign(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def load(
    cls: type[Any],
    *,
    path: str | Path | None,
    env: Mapping[str, str],
    prefix: str,
    example: str,
    sets: Sequence[str] = (),
    flags: Sequence[tuple[str, str, str]] = (),
    problems: list[str] | None = None,
) -> Any:
    """File, then ``env``, then ``sets``, then ``flags``, built into ``cls``.

    ``flags`` are ``(dotted key, text, flag name)`` from a command line that maps its own
    options onto keys (the same value rules). Field problems are appended to ``problems``.

    Raises ConfigError for an unreadable file or a malformed ``--set``; the field problems are
    left in ``problems`` (when given) so the caller can add its own range checks before raising.
    """
    data = read_toml(path, example=example) if path is not None else {}
    for dotted, value in env_overrides(env, prefix):
        _assign(data, dotted, value)
    for item in sets:
        dotted, sep, raw = item.partition("=")
        if not sep or not dotted.strip():
            raise ConfigError(f"--set {item!r} must look like section.key=value")
        _assign(data, dotted.strip().lower(), EnvValue(raw, f"--set {dotted.strip()}"))
    for dotted, text, flag in flags:
        _assign(data, dotted, EnvValue(text, flag))
    found: list[str] = [] if problems is None else problems
    config = build(cls, data, "", found)
    if problems is None and found:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(found))
    return config


def _origin(value: Any) -> str:
    return f" (from {value.source})" if isinstance(value, EnvValue) else ""


def build(cls: type[Any], data: Any, where: str, problems: list[str]) -> Any:
    """``cls`` from ``data``; every problem is appended to ``problems`` (the result may be None)."""
    if isinstance(data, EnvValue):
        data = _inline(data, where, problems)
    if not isinstance(data, dict):
        problems.append(f"{where.rstrip('.') or 'config'} must be a table, got {data!r}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in sorted(set(data) - set(fields)):
        close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {sorted(fields)}"
        problems.append(f"{where}{key}: unknown key{_origin(data[key])}{hint}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{where}{name}: required, add it")
            continue
        kwargs[name] = _coerce(hints[name], data[name], f"{where}{name}", problems)
    try:
        return cls(**kwargs)
    except TypeError:
        return None


def _inline(value: EnvValue, where: str, problems: list[str]) -> Any:
    """A TOML inline value (table, array) written as text."""
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        problems.append(
            f"{where.rstrip('.')}{_origin(value)}: {str(value)!r} is not a TOML inline value "
            '(e.g. {match = "*", bundle = "skab"} or [{...}, {...}])'
        )
        return None


def _unquote(value: EnvValue) -> str:
    text = str(value)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        try:
            parsed = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            return text
        if isinstance(parsed, str):
            return parsed
    return text


def _coerce(hint: Any, value: Any, where: str, problems: list[str]) -> Any:
    if dataclasses.is_dataclass(hint):
        return build(typing.cast(type[Any], hint), value, f"{where}.", problems)
    if typing.get_origin(hint) is tuple:
        return _coerce_tuple(hint, value, where, problems)
    if isinstance(value, EnvValue):
        return _coerce_text(hint, value, where, problems)
    return _coerce_toml(hint, value, where, problems)


def _coerce_tuple(hint: Any, value: Any, where: str, problems: list[str]) -> Any:
    (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
    if isinstance(value, EnvValue):
        if str(value).lstrip().startswith("["):
            value = _inline(value, where, problems)
        elif item is str:
            value = [v.strip() for v in str(value).split(",") if v.strip()]
        else:
            value = _inline(value, where, problems)
    if isinstance(value, dict) and dataclasses.is_dataclass(item):
        value = [value]  # one table where a list of them is expected
    if not isinstance(value, list):
        if value is not None:
            problems.append(f"{where}: expected a list, got {value!r}")
        return ()
    return tuple(_coerce(item, v, f"{where}[{i}]", problems) for i, v in enumerate(value))


def _coerce_text(hint: Any, value: EnvValue, where: str, problems: list[str]) -> Any:
    text = str(value).strip()
    label = f"{where}{_origin(value)}"
    if hint is str:
        return _unquote(value)
    if hint is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        problems.append(f"{label}: expected true or false, got {text!r}")
        return False
    if hint is int:
        try:
            return int(text)
        except ValueError:
            problems.append(f"{label}: expected an integer, got {text!r}")
            return 0
    if hint is float:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if math.isnan(number):  # NaN passes every "must be > 0" check: refuse it here
            problems.append(f"{label}: expected a number, got {text!r}")
            return 0.0
        return number
    raise TypeError(f"unsupported config type {hint}")


def _coerce_toml(hint: Any, value: Any, where: str, problems: list[str]) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{where}: expected true or false, got {value!r}")
        return False
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append(f"{where}: expected an integer, got {value!r}")
        return 0
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # TOML integers have no size limit
                problems.append(f"{where}: {value!r:.30}... is out of range")
                return 0.0
            if not math.isnan(number):
                return number
        problems.append(f"{where}: expected a number, got {value!r}")
        return 0.0
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # e.g. protocol = 5
        problems.append(f"{where}: expected a string, got {value!r}")
        return ""
    raise TypeError(f"unsupported config type {hint}")
