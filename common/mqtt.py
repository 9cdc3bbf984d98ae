"""The MQTT link as both sides set it up: the ``[mqtt]`` keys they share, their
checks, and a paho client for MQTT v5 with TLS and credentials."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from common.config import ConfigError

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


def mqtt_client(client_id: str, m: dict[str, Any]) -> mqtt.Client:
    """A paho client for MQTT v5 with the ``[mqtt]`` section's TLS and credentials;
    shared by the box and the hub."""
    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
    )
    if m["tls"]:
        c.tls_set(
            ca_certs=m["ca_file"] or None,
            certfile=m["cert_file"] or None,
            keyfile=m["key_file"] or None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    if m["username"]:
        c.username_pw_set(m["username"], m["password"] or None)
    return c


def connect_properties(m: dict[str, Any]) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = m["session_expiry_seconds"]
    return props
