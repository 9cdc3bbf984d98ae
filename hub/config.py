"""The hub's configuration: one TOML file, defaults that serve, environment overrides
named ``RADSETU_HUB_<SECTION>_<KEY>`` (so a box and a hub on one machine never read
each other's variables). Every key is documented in ``docs/config.md``."""

from __future__ import annotations

import os
from typing import Any

from common.config import Config, ConfigError, read_config
from common.mqtt import MQTT_DEFAULTS, validate_mqtt

DEFAULTS: dict[str, Any] = {
    "data_dir": "radsetu-hub-data",
    "log_level": "INFO",
    "web": {
        "host": "127.0.0.1",
        "port": 8090,
        "workers": 2,
        "behind_tls_proxy": False,
    },
    "mqtt": {
        "enabled": True,
        **MQTT_DEFAULTS,
        # short: Mosquitto keeps giving a shared subscription's messages to a member's
        # session while it is away; the boxes resend whatever the hub did not ack, so a
        # dead ingest worker should leave the group within minutes (docs/scale.md)
        "session_expiry_seconds": 300,
        "client_id": "radsetu-hub-1",
        "shared_group": "hub",
        # more brokers, "host:port" each, with the same TLS and credentials: each box is
        # on one broker (provisioning assigns it); the hub listens on all of them
        "other_brokers": [],
    },
    "ingest": {
        "box_quota_bytes": 20_000_000_000,
    },
    "index": {
        "url": "",
        "pool_size": 4,
    },
    "objects": {
        "url": "",
        "bucket": "radsetu",
        "access_key": "",
        "secret_key": "",
        "region": "",
    },
    "alerts": {
        "offline_seconds": 600,
        "backlog_growth_seconds": 1800,
        "low_disk_bytes": 5_000_000_000,
        "stall_seconds": 900,
    },
    # a critical result: who may learn what, and how long a confirmation may take
    "critical": {
        "confirm_minutes": 15.0,
        "patient_data": "initials",  # none | initials | name, in the SMS and e-mail
        "public_url": "",  # the hub's address as doctors reach it, for the link
    },
    # an SMS gateway's HTTP interface (Kannel's sendsms), and the key its replies carry
    "sms": {"url": "", "username": "", "password": "", "sender": "RadSetu", "inbound_key": ""},
    "smtp": {
        "host": "",
        "port": 25,
        "sender": "radsetu-hub@localhost",
        "username": "",
        "password": "",
        "starttls": False,
    },
    # the OHIF viewer's installed build (radsetu hub install-viewer); empty: none, and
    # the worklist opens studies in the built-in viewer
    "viewer": {"ohif_dir": ""},
    # a report may be signed on a STAT study's lossy preview (it then says so); by
    # default signing waits for the lossless images
    "reading": {"sign_on_preview": False},
    "retention": {
        "box_history_days": 90,
    },
}


def _validate(v: dict[str, Any]) -> None:
    if not 0 <= v["web"]["port"] <= 65535:
        raise ConfigError(f"web.port: {v['web']['port']} is not a TCP port")
    if not 1 <= v["web"]["workers"] <= 64:
        raise ConfigError("web.workers: between 1 and 64")
    if v["log_level"].upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError("log_level: one of DEBUG, INFO, WARNING, ERROR")
    validate_mqtt(v["mqtt"], "mqtt")
    for key, value in v["alerts"].items():
        if not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"alerts.{key}: a number, 0 or more")
    days = v["retention"]["box_history_days"]
    if not isinstance(days, int | float) or days < 1:
        raise ConfigError("retention.box_history_days: a number of days, 1 or more")
    if v["ingest"]["box_quota_bytes"] < 1_000_000:
        raise ConfigError("ingest.box_quota_bytes: at least 1000000")
    _validate_objects(v["objects"])
    _validate_critical(v)
    if v["index"]["url"] and not str(v["index"]["url"]).startswith(
        ("postgresql://", "postgres://")
    ):
        raise ConfigError(f"index.url: {v['index']['url']!r} is not a postgresql:// address")
    if not 1 <= v["index"]["pool_size"] <= 100:
        raise ConfigError("index.pool_size: between 1 and 100")
    _validate_brokers(v["mqtt"])
    for key in ("client_id", "shared_group"):
        value = v["mqtt"][key]
        if not value or any(c in value for c in "/+#$ "):
            raise ConfigError(f"mqtt.{key}: {value!r} must be non-empty, without / + # $ or spaces")


def _validate_brokers(m: dict[str, Any]) -> None:
    others = m["other_brokers"]
    if not isinstance(others, list):
        raise ConfigError('mqtt.other_brokers: a list of "host:port"')
    seen = {f"{m['host']}:{m['port']}"}
    for b in others:
        host, _, port = str(b).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ConfigError(f"mqtt.other_brokers: {b!r} is not host:port")
        if b in seen:
            raise ConfigError(f"mqtt.other_brokers: {b} is named twice")
        seen.add(str(b))


def _validate_objects(o: dict[str, Any]) -> None:
    if not o["url"]:
        return
    if not str(o["url"]).startswith(("http://", "https://")):
        raise ConfigError(f"objects.url: {o['url']!r} is not an http(s):// address")
    bucket = str(o["bucket"])
    if not 3 <= len(bucket) <= 63 or not all(c.isalnum() or c in ".-" for c in bucket):
        raise ConfigError(f"objects.bucket: {bucket!r} is not an S3 bucket name")
    for key in ("access_key", "secret_key"):
        if not o[key]:
            raise ConfigError(f"objects.{key}: needed with objects.url")


def load(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Config:
    """Read the hub's config; ConfigError names the offending key."""
    return read_config(path, env, DEFAULTS, "RADSETU_HUB", _validate)


def _validate_critical(v: dict[str, Any]) -> None:
    c = v["critical"]
    if not 0 < c["confirm_minutes"] <= 24 * 60:
        raise ConfigError("critical.confirm_minutes: more than 0, at most 1440")
    if c["patient_data"] not in ("none", "initials", "name"):
        raise ConfigError("critical.patient_data: one of none, initials, name")
    for key, url in (("critical.public_url", c["public_url"]), ("sms.url", v["sms"]["url"])):
        if url and not str(url).startswith(("http://", "https://")):
            raise ConfigError(f"{key}: an http:// or https:// URL")
    if not 0 < v["smtp"]["port"] <= 65535:
        raise ConfigError("smtp.port: a TCP port")
