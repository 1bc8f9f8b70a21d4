"""``-c KEY=VALUE``: run-config overrides, written as for ``flwr run --run-config``.

Each value is TOML (``num-sites=8``, ``dp=false``, ``task="mnist"``); one ``-c`` may hold
several space-separated pairs, or name a ``.toml`` file of them; a later pair wins. Anything
else ends in one line naming the key and the value, never in a traceback. Whether a key is
known and its value in range is :class:`~fedllm.config.RunConfig`'s check, made afterwards.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path

from fedllm.errors import ConfigError

Scalar = bool | int | float | str

# Flower's own pattern (flwr.common.config.parse_config_args): KEY=VALUE, VALUE quoted or not.
_PAIR = re.compile(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)")
_KEY = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
# A shell drops the quotes of -c task="mnist": they must be inside single quotes.
_HOW = "values are numbers, true/false or quoted strings (-c 'task=\"mnist\"')"


def add_run_config_option(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument(
        "-c",
        "--run-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=text,
    )


def parse_overrides(args: Sequence[str]) -> dict[str, Scalar]:
    """The overrides the ``-c`` arguments give, in order (a later key wins)."""
    overrides: dict[str, Scalar] = {}
    for arg in args:
        if "=" not in arg and arg.strip().endswith(".toml"):
            overrides.update(_file(Path(arg.strip())))
            continue
        matched = list(_PAIR.finditer(arg))
        leftover = _PAIR.sub("", arg).strip()
        if not matched:
            raise ConfigError(f"-c {arg!r} is not KEY=VALUE; {_HOW}")
        if leftover:
            raise ConfigError(f"-c {arg!r}: {leftover!r} is not KEY=VALUE; {_HOW}")
        for pair in matched:
            key, value = pair.group(1), pair.group(2)
            overrides[key] = _value(key, value)
    return overrides


def _value(key: str, text: str) -> Scalar:
    if not _KEY.fullmatch(key):
        raise ConfigError(f"-c {key}={text}: {key!r} is not a run-config key (kebab-case)")
    try:
        parsed = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        raise ConfigError(
            f"-c {key}={text}: {text} is not a number, true/false or a quoted string "
            f"(a string needs quotes the shell keeps: -c 'KEY=\"text\"')"
        ) from None
    if not isinstance(parsed, bool | int | float | str):
        raise ConfigError(
            f"-c {key}={text}: `{key}` takes one number, true/false or string, "
            f"not a TOML {type(parsed).__name__}"
        )
    return parsed


def _file(path: Path) -> dict[str, Scalar]:
    """A ``.toml`` file of overrides, as ``flwr run --run-config FILE.toml`` reads it."""
    try:
        table = tomllib.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"-c {path}: cannot read it ({err.strerror})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"-c {path}: not valid TOML ({err})") from None
    flat: dict[str, Scalar] = {}
    for key, value in _flatten(table).items():
        if not isinstance(value, bool | int | float | str):
            raise ConfigError(f"-c {path}: `{key}` takes one number, true/false or string")
        flat[key] = value
    return flat


def _flatten(table: dict[str, object], prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
