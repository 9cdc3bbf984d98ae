"""The box's configuration: one TOML file, defaults that serve, environment overrides.

Every key lives in ``DEFAULTS`` with its type given by its default; ``docs/config.md``
documents each one (a test checks that). ``RADSETU_<SECTION>_<KEY>`` overrides a key
in a section, ``RADSETU_<KEY>`` a top-level key.
"""

from __future__ import annotations

import copy
import os
import re
import socket
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# the link to the broker; the hub's [mqtt] section starts from the same keys
MQTT_DEFAULTS: dict[str, Any] = {
    "host": "localhost",
    "port": 1883,
    "tls": False,
    "ca_file": "",
    "cert_file": "",
    "key_file": "",
    "username": "",
    "password": "",
    "keepalive": 30,
    "session_expiry_seconds": 604800,
}

DEFAULTS: dict[str, Any] = {
    "box_id": "",  # empty: the machine's host name
    "clinic": "",
    "data_dir": "radsetu-data",
    "log_level": "INFO",
    "dicom": {
        "ae_title": "RADSETU",
        "host": "0.0.0.0",
        "port": 11112,
        "allowed_callers": [],
        "max_pdu": 262144,
        "stat_callers": [],
        "engine": "native",
    },
    "web": {
        "host": "127.0.0.1",
        "port": 8080,
        "trust_loopback": True,
        "max_upload_bytes": 8_000_000_000,
    },
    "store": {
        "reserve_bytes": 2_000_000_000,
        "quiet_seconds": 60,
        "max_instance_bytes": 4_000_000_000,
        "retention_days": 30,
    },
    "mqtt": MQTT_DEFAULTS,
    "sync": {
        "enabled": True,
        "chunk_bytes": 131072,
        "window": 8,
        "ack_timeout_seconds": 120,
        "max_bytes_per_second": 0,
        "windows": [],
        "stat_ignores_windows": True,
        "pixel_effort": 3,
        "coder_seconds": 120.0,
        "level": 3,
        "status_seconds": 30,
        "reconnect_min_seconds": 1,
        "reconnect_max_seconds": 60,
    },
    "print": {
        "printer": "",
    },
    "stat": {
        "calling_ae_titles": [],
        "modalities": [],
        "description_words": [],
    },
    "import": {
        "max_total_bytes": 64_000_000_000,
        "max_zip_ratio": 200,
    },
}

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable, no backslash
_BOX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


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


def _validate(v: dict[str, Any]) -> None:
    if not v["box_id"]:
        v["box_id"] = socket.gethostname().split(".")[0]
    if not _BOX_RE.match(v["box_id"]):
        raise ConfigError(
            f"box_id: {v['box_id']!r} must be 1-64 letters, digits, '-' or '_' "
            "(it becomes part of MQTT topics)"
        )
    d = v["dicom"]
    if not _AE_RE.match(d["ae_title"]) or d["ae_title"].strip() == "":
        raise ConfigError(f"dicom.ae_title: {d['ae_title']!r} is not a valid AE title (1-16 chars)")
    for ae in d["allowed_callers"] + d["stat_callers"]:
        if not _AE_RE.match(ae):
            raise ConfigError(f"dicom: {ae!r} in a callers list is not a valid AE title")
    for section, key in (("dicom", "port"), ("web", "port")):
        if not 0 <= v[section][key] <= 65535:
            raise ConfigError(f"{section}.{key}: {v[section][key]} is not a TCP port")
    if v["store"]["reserve_bytes"] < 0:
        raise ConfigError("store.reserve_bytes: must be 0 or more")
    if v["store"]["quiet_seconds"] < 0:
        raise ConfigError("store.quiet_seconds: must be 0 or more")
    if v["dicom"]["max_pdu"] and v["dicom"]["max_pdu"] < 4096:
        raise ConfigError("dicom.max_pdu: must be 0 (unlimited) or at least 4096")
    if d["engine"] not in ("native", "pynetdicom"):
        raise ConfigError(f"dicom.engine: {d['engine']!r} is not one of native, pynetdicom")
    if v["log_level"].upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError("log_level: one of DEBUG, INFO, WARNING, ERROR")
    if v["store"]["retention_days"] < 0:
        raise ConfigError("store.retention_days: must be 0 (keep forever) or more")
    validate_mqtt(v["mqtt"], "mqtt")
    s = v["sync"]
    if not 1024 <= s["chunk_bytes"] <= 8 * 1024 * 1024:
        raise ConfigError("sync.chunk_bytes: between 1024 and 8388608")
    if not 1 <= s["window"] <= 20:
        raise ConfigError("sync.window: between 1 and 20 (Mosquitto lets 20 messages be in flight)")
    for key in ("ack_timeout_seconds", "status_seconds", "reconnect_min_seconds", "coder_seconds"):
        if s[key] <= 0:
            raise ConfigError(f"sync.{key}: must be more than 0")
    if s["reconnect_max_seconds"] < s["reconnect_min_seconds"]:
        raise ConfigError("sync.reconnect_max_seconds: must be at least reconnect_min_seconds")
    if s["max_bytes_per_second"] < 0:
        raise ConfigError("sync.max_bytes_per_second: 0 (no cap) or more")
    if not 0 <= s["pixel_effort"] <= 9:
        raise ConfigError("sync.pixel_effort: 0 (zstd only) to 9")
    if not 1 <= s["level"] <= 22:
        raise ConfigError("sync.level: a zstd level, 1 to 22")
    for w in s["windows"]:
        try:
            parse_window(w)
        except ValueError as exc:
            raise ConfigError(f"sync.windows: {exc}") from exc
    for ae in v["stat"]["calling_ae_titles"]:
        if not _AE_RE.match(ae):
            raise ConfigError(f"stat.calling_ae_titles: {ae!r} is not a valid AE title")


def validate_mqtt(m: dict[str, Any], name: str) -> None:
    """Checks shared by the box's and the hub's ``[mqtt]`` sections."""
    if not 0 < m["port"] <= 65535:
        raise ConfigError(f"{name}.port: {m['port']} is not a TCP port")
    if m["keepalive"] < 2:
        raise ConfigError(f"{name}.keepalive: at least 2 seconds")
    if m["session_expiry_seconds"] < 0:
        raise ConfigError(f"{name}.session_expiry_seconds: 0 or more")
    for key in ("ca_file", "cert_file", "key_file"):
        if m[key] and not Path(m[key]).is_file():
            raise ConfigError(f"{name}.{key}: {m[key]} does not exist or is not a file")
    if bool(m["cert_file"]) != bool(m["key_file"]):
        raise ConfigError(f"{name}.cert_file and {name}.key_file: give both or neither")
    if (m["cert_file"] or m["ca_file"]) and not m["tls"]:
        raise ConfigError(f"{name}.tls: certificates are set but tls is false")
    if m["password"] and not m["username"]:
        raise ConfigError(f"{name}.password: set without {name}.username")


def parse_window(text: str) -> tuple[int, int]:
    """``"HH:MM-HH:MM"`` (local time, may wrap past midnight) as minutes of the day."""
    m = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)", text.strip())
    if not m:
        raise ValueError(f'{text!r} is not like "22:00-06:00"')
    a, b = int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])
    if a == b:
        raise ValueError(f"{text!r} is empty (start equals end)")
    return a, b


def load(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Config:
    """Read the box's config file (if any), apply environment overrides, validate.

    Raises ConfigError with the offending key when anything is wrong; never
    starts a box on a half-understood configuration.
    """
    return read_config(path, env, DEFAULTS, "RADSETU", _validate)


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


def all_keys(defaults: dict[str, Any] = DEFAULTS) -> list[str]:
    """Every documented key as ``section.key`` (top-level keys bare)."""
    keys = []
    for key, default in defaults.items():
        if isinstance(default, dict):
            keys.extend(f"{key}.{sub}" for sub in default)
        else:
            keys.append(key)
    return keys
