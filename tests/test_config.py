"""Configuration: defaults that serve, TOML, environment overrides, clear errors."""

from pathlib import Path

import pytest

from edge.config import DEFAULTS, ConfigError, all_keys, load

DOCS = Path(__file__).resolve().parent.parent / "docs" / "config.md"


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
        assert repr(default).replace("'", '"') in text or str(default) in text, (
            f"the default of {key} ({default!r}) is not in docs/config.md"
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
