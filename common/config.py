"""Configuration as every RadSetu service reads it: one TOML file, defaults that
serve, environment overrides, validation that names the offending key. Each service
brings its own ``DEFAULTS`` and checks (``edge/config.py``, ``hub/config.py``)."""

from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """The configuration file or an override is wrong; the message says which key."""


@dataclass(frozen=True)
class Config:
    values: dict[str, Any]
    source: str  # where it came from, for the log

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def box_id(self) -> str:
        return self.values["box_id"]

    @property
    def data_dir(self) -> Path:
        return Path(self.values["data_dir"])

    def section(self, name: str) -> dict[str, Any]:
        return self.values[name]


def _coerce(name: str, default: Any, raw: Any, from_env: bool) -> Any:
    """Convert ``raw`` to the type of ``default``; env values arrive as strings."""
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        if from_env and str(raw).lower() in {"1", "true", "yes", "on"}:
            return True
        if from_env and str(raw).lower() in {"0", "false", "no", "off", ""}:
            return False
    elif isinstance(default, int):
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if from_env:
            try:
                return int(str(raw).replace("_", ""))
            except ValueError:
                pass
    elif isinstance(default, float):
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        if from_env:
            try:
                return float(raw)
            except ValueError:
                pass
    elif isinstance(default, list):
        if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            return raw
        if from_env:
            return [x.strip() for x in str(raw).split(",") if x.strip()]
    elif isinstance(default, str):
        if isinstance(raw, str):
            return raw
    raise ConfigError(f"{name}: expected {type(default).__name__} (like {default!r}), got {raw!r}")


def _merge(defaults: dict[str, Any], given: dict[str, Any], prefix: str) -> dict[str, Any]:
    out = copy.deepcopy(defaults)
    for key, raw in given.items():
        name = f"{prefix}{key}"
        if key not in defaults:
            known = ", ".join(sorted(defaults))
            raise ConfigError(f"{name}: unknown key (known here: {known})")
        if isinstance(defaults[key], dict):
            if not isinstance(raw, dict):
                raise ConfigError(f"{name}: expected a [{name}] table")
            out[key] = _merge(defaults[key], raw, f"{name}.")
        else:
            out[key] = _coerce(name, defaults[key], raw, from_env=False)
    return out


def _apply_env(
    values: dict[str, Any], env: dict[str, str], defaults: dict[str, Any], prefix: str
) -> None:
    for key, default in defaults.items():
        if isinstance(default, dict):
            for sub, subdefault in default.items():
                var = f"{prefix}_{key}_{sub}".upper()
                if var in env:
                    values[key][sub] = _coerce(var, subdefault, env[var], from_env=True)
        else:
            var = f"{prefix}_{key}".upper()
            if var in env:
                values[key] = _coerce(var, default, env[var], from_env=True)


def read_config(
    path: str | os.PathLike[str] | None,
    env: dict[str, str] | None,
    defaults: dict[str, Any],
    prefix: str,
    validate: Callable[[dict[str, Any]], None],
) -> Config:
    """The TOML + environment + validation steps, for any service's ``defaults``."""
    env = dict(os.environ) if env is None else env
    given: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        try:
            given = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {p} does not exist") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
        source = str(p)
    values = _merge(defaults, given, "")
    _apply_env(values, env, defaults, prefix)
    validate(values)
    return Config(values=values, source=source)


def config_keys(defaults: dict[str, Any]) -> list[str]:
    """Every documented key as ``section.key`` (top-level keys bare)."""
    keys = []
    for key, default in defaults.items():
        if isinstance(default, dict):
            keys.extend(f"{key}.{sub}" for sub in default)
        else:
            keys.append(key)
    return keys
