"""The box's configuration: one TOML file, defaults that serve, environment overrides.

Every key lives in ``DEFAULTS`` with its type given by its default; ``docs/config.md``
documents each one (a test checks that). ``RADSETU_<SECTION>_<KEY>`` overrides a key
in a section, ``RADSETU_<KEY>`` a top-level key.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Any

from common.config import Config, ConfigError, config_keys, read_config
from common.mqtt import MQTT_DEFAULTS, validate_mqtt
from common.ratios import parse_ratios
from wire.pacing import parse_window

# the largest compression ratio of a lossy preview, per modality and body part: the
# Canadian Association of Radiologists' standard for irreversible compression (2008) for
# CT neuro, CT chest and body, CR/DX chest and MR; CT, CR and DX elsewhere take the
# lower figures here (ours, chosen to be safe); other modalities get no preview
PREVIEW_RATIOS = [
    "CT=12",
    "CT HEAD=12",
    "CT BRAIN=12",
    "CT CHEST=15",
    "CT ABDOMEN=15",
    "CT PELVIS=15",
    "CT ABDOMENPELVIS=15",
    "CT CHESTABDOMEN=15",
    "MR=24",
    "CR CHEST=30",
    "DX CHEST=30",
    "CR=10",
    "DX=10",
]

DEFAULTS: dict[str, Any] = {
    "box_id": "",  # empty: the machine's host name
    "clinic": "",
    # the clinic's language: the headings of its printed reports ("en", "hi", "kn")
    "language": "en",
    # what of a patient the hub's SMS and e-mail about a critical finding may carry:
    # "none", "initials" or "name"; "" leaves it to the hub (critical.patient_data)
    "patient_data_in_messages": "",
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
        "max_connections": 64,
        "max_per_address": 8,
        "setup_seconds": 20,
    },
    # the Modality Worklist (edge/worklist.py): modalities fetch the clinic's orders here;
    # stations: "MODALITY=AE_TITLE" for the station an order of that modality goes to
    "worklist": {
        "enabled": True,
        "port": 11113,
        "max_answers": 500,
        "stations": [],
        # the clinic's exams, offered first on the order form: "MODALITY BODY PART"
        "exams": ["CR CHEST", "CT HEAD", "CT CHEST", "CT ABDOMEN", "US ABDOMEN", "MR BRAIN"],
    },
    "web": {
        "host": "127.0.0.1",
        "port": 8080,
        "trust_loopback": True,
        "max_upload_bytes": 8_000_000_000,
        "behind_tls_proxy": False,
    },
    "store": {
        "reserve_bytes": 2_000_000_000,
        "quiet_seconds": 60,
        "max_instance_bytes": 4_000_000_000,
        "retention_days": 30,
    },
    "mqtt": {**MQTT_DEFAULTS, "congestion_control": "bbr"},
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
        "preview": "stat",
        "preview_ratios": PREVIEW_RATIOS,
        "rest_wait_seconds": 600,
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
_CC_RE = re.compile(r"^[a-z0-9_]{0,15}$")
_BOX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def _validate_clinic(v: dict[str, Any]) -> None:
    if v["patient_data_in_messages"] not in ("", "none", "initials", "name"):
        raise ConfigError("patient_data_in_messages: one of none, initials, name (or empty)")
    if v["language"] not in ("en", "hi", "kn"):
        raise ConfigError(f"language: {v['language']!r} must be en, hi or kn")


def _validate(v: dict[str, Any]) -> None:
    if not v["box_id"]:
        v["box_id"] = socket.gethostname().split(".")[0]
    if not _BOX_RE.match(v["box_id"]):
        raise ConfigError(
            f"box_id: {v['box_id']!r} must be 1-64 letters, digits, '-' or '_' "
            "(it becomes part of MQTT topics)"
        )
    _validate_clinic(v)
    d = v["dicom"]
    if not _AE_RE.match(d["ae_title"]) or d["ae_title"].strip() == "":
        raise ConfigError(f"dicom.ae_title: {d['ae_title']!r} is not a valid AE title (1-16 chars)")
    for ae in d["allowed_callers"] + d["stat_callers"]:
        if not _AE_RE.match(ae):
            raise ConfigError(f"dicom: {ae!r} in a callers list is not a valid AE title")
    _validate_worklist(v["worklist"])
    for section, key in (("dicom", "port"), ("web", "port"), ("worklist", "port")):
        if not 0 <= v[section][key] <= 65535:
            raise ConfigError(f"{section}.{key}: {v[section][key]} is not a TCP port")
    if v["store"]["reserve_bytes"] < 0:
        raise ConfigError("store.reserve_bytes: must be 0 or more")
    if v["store"]["quiet_seconds"] < 0:
        raise ConfigError("store.quiet_seconds: must be 0 or more")
    if v["dicom"]["max_pdu"] and v["dicom"]["max_pdu"] < 4096:
        raise ConfigError("dicom.max_pdu: must be 0 (unlimited) or at least 4096")
    for key in ("max_connections", "max_per_address", "setup_seconds"):
        if d[key] < 1:
            raise ConfigError(f"dicom.{key}: must be 1 or more")
    if d["engine"] not in ("native", "pynetdicom"):
        raise ConfigError(f"dicom.engine: {d['engine']!r} is not one of native, pynetdicom")
    if v["log_level"].upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError("log_level: one of DEBUG, INFO, WARNING, ERROR")
    if v["store"]["retention_days"] < 0:
        raise ConfigError("store.retention_days: must be 0 (keep forever) or more")
    validate_mqtt(v["mqtt"], "mqtt")
    if not _CC_RE.match(v["mqtt"]["congestion_control"]):
        raise ConfigError(
            "mqtt.congestion_control: a kernel's name for it (bbr, cubic...) or empty"
        )
    _validate_sync(v["sync"])
    for ae in v["stat"]["calling_ae_titles"]:
        if not _AE_RE.match(ae):
            raise ConfigError(f"stat.calling_ae_titles: {ae!r} is not a valid AE title")


def _validate_sync(s: dict[str, Any]) -> None:
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
    _validate_preview(s)
    for w in s["windows"]:
        try:
            parse_window(w)
        except ValueError as exc:
            raise ConfigError(f"sync.windows: {exc}") from exc


def _validate_preview(s: dict[str, Any]) -> None:
    if s["preview"] not in ("stat", "all", "off"):
        raise ConfigError("sync.preview: one of stat, all, off")
    try:
        parse_ratios(s["preview_ratios"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"sync.preview_ratios: {exc}") from exc
    if s["rest_wait_seconds"] <= 0:
        raise ConfigError("sync.rest_wait_seconds: must be more than 0")


def _validate_worklist(w: dict[str, Any]) -> None:
    if not 1 <= w["max_answers"] <= 10_000:
        raise ConfigError("worklist.max_answers: between 1 and 10000")
    for exam in w["exams"]:
        if not re.fullmatch(r"[A-Z]{2}( [A-Z ]{1,16})?", str(exam)):
            raise ConfigError(f"worklist.exams: {exam!r} is not MODALITY BODYPART (CT HEAD)")
    for item in w["stations"]:
        modality, _, ae = str(item).partition("=")
        if not re.fullmatch(r"[A-Z]{2}", modality) or not _AE_RE.match(ae) or not ae.strip():
            raise ConfigError(f"worklist.stations: {item!r} is not MODALITY=AE_TITLE (CT=CT_ROOM1)")


def stations(config: Config) -> dict[str, str]:
    """``worklist.stations`` as modality -> the station AE title its orders go to."""
    pairs = (str(item).partition("=") for item in config["worklist"].get("stations", []))
    return {modality: ae for modality, _, ae in pairs}


def station_for(config: Config, modality: str) -> str:
    """The station AE title an order of ``modality`` is scheduled on ("" for any)."""
    return stations(config).get(modality, "")


def load(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Config:
    """Read the box's config file (if any), apply environment overrides, validate.

    Raises ConfigError with the offending key when anything is wrong; never
    starts a box on a half-understood configuration.
    """
    return read_config(path, env, DEFAULTS, "RADSETU", _validate)


def all_keys(defaults: dict[str, Any] = DEFAULTS) -> list[str]:
    """Every documented key of the box as ``section.key`` (top-level keys bare)."""
    return config_keys(defaults)
