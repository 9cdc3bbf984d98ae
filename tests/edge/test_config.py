"""Configuration: defaults that serve, TOML, environment overrides, clear errors."""

import json

import pytest

from edge.config import DEFAULTS, ConfigError, all_keys, load
from tests.helpers import ROOT

DOCS = ROOT / "docs" / "config.md"


def test_defaults_serve_without_a_file():
    cfg = load(None, env={})
    assert cfg["dicom"]["port"] == 11112
    assert cfg["store"]["quiet_seconds"] == 60
    assert cfg.box_id  # the host name when not set


def test_file_then_environment(tmp_path):
    p = tmp_path / "edge.toml"
    p.write_text('box_id = "clinic-7"\n[dicom]\nport = 4242\nallowed_callers = ["CT1"]\n')
    cfg = load(
        p,
        env={
            "RADSETU_DICOM_PORT": "5000",
            "RADSETU_STORE_RESERVE_BYTES": "1_000",
            "RADSETU_DICOM_ALLOWED_CALLERS": "CT1, MR2",
            "RADSETU_DATA_DIR": "/x",
        },
    )
    assert cfg.box_id == "clinic-7"
    assert cfg["dicom"]["port"] == 5000
    assert cfg["dicom"]["allowed_callers"] == ["CT1", "MR2"]
    assert cfg["store"]["reserve_bytes"] == 1000
    assert cfg["data_dir"] == "/x"


@pytest.mark.parametrize(
    "text, env, message",
    [
        ("[dicom]\nprot = 1\n", {}, "dicom.prot: unknown key"),
        ("[dicom]\nport = 'abc'\n", {}, "dicom.port: expected int"),
        ("[dicom]\nport = 70000\n", {}, "not a TCP port"),
        ('box_id = "../etc"\n', {}, "box_id"),
        ("[dicom\n", {}, "not valid TOML"),
        ("", {"RADSETU_WEB_PORT": "eighty"}, "RADSETU_WEB_PORT: expected int"),
        ('[dicom]\nae_title = "THIS-TITLE-IS-TOO-LONG"\n', {}, "dicom.ae_title"),
        ('[sync]\npreview = "sometimes"\n', {}, "sync.preview: one of stat, all, off"),
        ("[sync]\nrest_wait_seconds = 0\n", {}, "sync.rest_wait_seconds: must be more"),
        ('[mqtt]\ncongestion_control = "bbr; rm -rf"\n', {}, "mqtt.congestion_control: a kernel"),
        ('[sync]\npreview_ratios = ["CT=500"]\n', {}, "sync.preview_ratios: 'CT=500'"),
        ('[sync]\npreview_ratios = ["CT HEAD NECK=5"]\n', {}, "sync.preview_ratios: 'CT HEAD"),
        ("", {"RADSETU_SYNC_PREVIEW_RATIOS": "CT=12, MR"}, "sync.preview_ratios: 'MR' is not"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, env, message):
    p = tmp_path / "edge.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load(p, env=env)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml", env={})


def test_every_key_is_documented_with_its_default():
    text = DOCS.read_text()
    for key in all_keys():
        section, _, name = key.rpartition(".")
        default = DEFAULTS[section][name] if section else DEFAULTS[name]
        assert f"`{key}`" in text, f"{key} is not documented in docs/config.md"
        env = "RADSETU_" + key.replace(".", "_").upper()
        assert env in text, f"{env} is not documented in docs/config.md"
        box_part = text.split("## The hub", 1)[0]
        (row,) = [line for line in box_part.splitlines() if line.startswith(f"| `{key}` |")]
        toml = json.dumps(default)  # the TOML spelling of these defaults
        assert f"`{toml}`" in row or (key == "box_id" and '`""`' in row), (
            f"the default of {key} ({toml}) is not in its row of docs/config.md"
        )


def test_every_hub_key_is_documented_and_overridable(tmp_path):
    from hub import config as hub_config

    text = DOCS.read_text().split("## The hub", 1)[1]
    for key in all_keys(hub_config.DEFAULTS):
        env = "RADSETU_HUB_" + key.replace(".", "_").upper()
        assert f"`{key}`" in text and env in text, key
    cfg = hub_config.load(None, env={"RADSETU_HUB_WEB_PORT": "9000", "RADSETU_WEB_PORT": "1"})
    assert cfg["web"]["port"] == 9000
    with pytest.raises(ConfigError, match="web.workers"):
        hub_config.load(None, env={"RADSETU_HUB_WEB_WORKERS": "0"})


def test_sync_and_mqtt_keys_are_checked(tmp_path):
    for env, key in (
        ({"RADSETU_SYNC_WINDOWS": "22:00-25:00"}, "sync.windows"),
        ({"RADSETU_SYNC_WINDOWS": "08:00-08:00"}, "sync.windows"),
        ({"RADSETU_SYNC_WINDOW": "50"}, "sync.window"),
        ({"RADSETU_SYNC_CHUNK_BYTES": "10"}, "sync.chunk_bytes"),
        ({"RADSETU_MQTT_PORT": "0"}, "mqtt.port"),
        ({"RADSETU_MQTT_CA_FILE": str(tmp_path / "missing.crt")}, "mqtt.ca_file"),
        ({"RADSETU_MQTT_PASSWORD": "x"}, "mqtt.password"),
        ({"RADSETU_STORE_RETENTION_DAYS": "-1"}, "store.retention_days"),
        ({"RADSETU_STAT_CALLING_AE_TITLES": "BAD\\AE"}, "stat.calling_ae_titles"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load(None, env=env)
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    with pytest.raises(ConfigError, match="mqtt.tls"):
        load(None, env={"RADSETU_MQTT_CA_FILE": str(ca)})
    cfg = load(None, env={"RADSETU_SYNC_WINDOWS": "22:00-06:00, 12:00-13:00"})
    assert cfg["sync"]["windows"] == ["22:00-06:00", "12:00-13:00"]


def test_sync_windows_and_the_bandwidth_cap():
    from datetime import datetime

    from wire.pacing import TokenBucket, in_windows

    night = ["22:00-06:00"]
    assert in_windows([], datetime(2026, 1, 1, 12, 0))
    assert in_windows(night, datetime(2026, 1, 1, 23, 30))
    assert in_windows(night, datetime(2026, 1, 1, 5, 59))
    assert not in_windows(night, datetime(2026, 1, 1, 6, 0))
    assert not in_windows(night, datetime(2026, 1, 1, 12, 0))
    b = TokenBucket(1000)
    b.at = 0.0
    assert b.ready(0.0)
    b.spend(3000)  # one big chunk may overdraw...
    assert not b.ready(1.0)  # ...and then nothing goes until it is paid back
    assert b.ready(3.0)
    assert TokenBucket(0).ready(0.0)
