"""Helpers for tests that run a site: a box, a broker and a hub as real processes."""

from __future__ import annotations

import hashlib
import http.client
import re
import urllib.parse
from pathlib import Path

from devkit.box import Box
from devkit.broker import Hub
from devkit.corpus import data_file, replicate

ROOT = Path(__file__).resolve().parent.parent  # the repository


def start_box(boxes: list, path: Path, mqtt: dict, **kw) -> Box:  # type: ignore[type-arg]
    b = Box(path, mqtt=mqtt, quiet_seconds=kw.pop("quiet_seconds", 1), **kw)
    boxes.append(b)
    return b.start()


def hub_study(hub: Hub, study_uid: str) -> list[dict]:  # type: ignore[type-arg]
    try:
        return hub.api(f"/api/studies/{study_uid}")["instances"]
    except Exception:  # noqa: BLE001 - 404 until it arrives
        return []


def box_state(box: Box, study_uid: str) -> str:
    return box.api(f"/api/studies/{study_uid}")["state"]


def delivered(box: Box, study_uid: str) -> bool:
    return box_state(box, study_uid) == "delivered"


def assert_same_at_hub(box: Box, hub: Hub, study_uid: str) -> None:
    """Every instance at the hub once, with the box's SHA-256, and the file's bytes
    hashing to it."""
    at_box = sorted(
        (i["sop_instance_uid"], i["sha256"])
        for i in box.api(f"/api/studies/{study_uid}")["instances"]
    )
    at_hub = hub_study(hub, study_uid)
    assert sorted((i["sop_instance_uid"], i["sha256"]) for i in at_hub) == at_box
    for i in at_hub:
        stored = hub.data_dir / "objects" / i["sha256"][:2] / f"{i['sha256']}.dcm"
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == i["sha256"]


def hub_transfers(hub: Hub, study_uid: str | None = None) -> list[dict]:  # type: ignore[type-arg]
    rows = hub.api("/api/transfers")["transfers"]
    return [t for t in rows if study_uid is None or t["study_uid"] == study_uid]


def make_study(
    tmp_path: Path, name: str, count: int, src: str = "693_UNCI.dcm"
) -> tuple[list[Path], str]:
    import pydicom

    files = replicate(data_file(src), tmp_path / name, count)
    return files, str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def sign_report(hub: Hub, uid: str, words: str = "No acute findings.", by: str = "Dr B") -> str:
    """A report on the study, drafted and signed through the hub's API; its id."""
    r = hub.api(f"/api/studies/{uid}/reports",
                {"findings": words, "impression": words, "radiologist": by})  # fmt: skip
    hub.api(f"/api/reports/{r['report_id']}/sign", {})
    return str(r["report_id"])


def box_login(port: int, user: str, password: str) -> str:
    """A session cookie for the box's pages, got the way a browser gets it."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/login")
    r = c.getresponse()
    cookie = r.getheader("Set-Cookie", "").split(";")[0]
    csrf = re.search(r'name="csrf" value="([^"]+)"', r.read().decode())[1]  # type: ignore[index]
    body = urllib.parse.urlencode({"csrf": csrf, "username": user, "password": password})
    c.request("POST", "/login", body, {"Cookie": cookie,
              "Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    r = c.getresponse()
    r.read()
    assert r.status == 302, r.status
    return r.getheader("Set-Cookie", "").split(";")[0]


def hub_app(tmp_path: Path):  # type: ignore[no-untyped-def]
    """The hub's web app on a data folder of its own (no broker), and a store on it."""
    from hub import config as hub_config
    from hub.store import FileHubStore
    from hub.web import create_app

    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "hub"}"\n[mqtt]\nenabled = false\n')
    return create_app(hub_config.load(cfg)), FileHubStore(tmp_path / "hub")


def hub_login(client, user: str, password: str) -> None:  # type: ignore[no-untyped-def]
    """Log ``client`` (the app's test client) in through the hub's login form."""
    found = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").get_data(as_text=True))
    assert found
    r = client.post("/login", data={"username": user, "password": password, "csrf": found[1]})
    assert r.status_code in (302, 303), r.status_code
