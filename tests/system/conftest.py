"""The apps of both ends, in-process on their real SQLite stores, with an account of
each role (used by test_access.py and test_sessions.py): ``hub_app`` and ``box_app``
(``hub`` and ``box`` are the real processes of tests/conftest.py)."""

from __future__ import annotations

import pytest

from edge import accounts
from edge import config as edge_config
from edge.web import create_app as make_box_app
from hub import access, users
from hub import config as hub_config
from hub.store import FileHubStore
from hub.web import create_app as make_hub_app

PASSWORD = "correct horse battery"


@pytest.fixture
def hub_app(tmp_path):
    cfg_path = tmp_path / "hub.toml"
    cfg_path.write_text(f'data_dir = "{tmp_path / "hub"}"\n[mqtt]\nenabled = false\n')
    app = make_hub_app(hub_config.load(cfg_path))
    store = FileHubStore(tmp_path / "hub")
    tokens = {}
    for role in users.ROLES:
        users.add(store, f"a-{role}", role, PASSWORD)
        tokens[role] = access.add_token(store, f"a-{role}", "test")
    yield app, store, tokens
    store.close()


@pytest.fixture
def box_app(tmp_path):
    cfg_path = tmp_path / "edge.toml"
    cfg_path.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[store]\nreserve_bytes = 0\n'
        "[web]\ntrust_loopback = false\n"
    )
    app = make_box_app(edge_config.load(cfg_path))
    store = app.config["RADSETU_STORE"]
    accounts.add_user(store.db, "asha", "staff", PASSWORD, "hi")
    accounts.add_user(store.db, "boss", "admin", PASSWORD)
    return app, store


@pytest.fixture
def seaweed(tmp_path):
    """A real S3 server (SeaweedFS) as a plain process, for the hub's [objects]."""
    from devkit.seaweed import SeaweedFS

    s = SeaweedFS(tmp_path / "seaweed").start()
    yield s
    s.stop()
