"""Who may do what, at both ends: every route of each app is walked (so a new page
cannot be left open), roles, CSRF, hostile uploads, HTML in names on every page, and
the append-only audit log. The apps run in-process on their real SQLite stores."""

from __future__ import annotations

import io
import re
import sqlite3
import zipfile

import psycopg
import pydicom
import pytest

from devkit.corpus import data_file, pydicom_file
from edge import accounts
from edge import config as edge_config
from edge.intake import accept_file
from edge.web import create_app as box_app
from hub import access
from tests.system.conftest import PASSWORD

EVIL = "<script>window.pwned=1</script>^Evil"

DUMMY = {"study_uid": "1.2.3", "sop_uid": "1.2.3.4", "report_id": "r1", "box_id": "box-1",
         "doctor_id": 1, "token": "t0ken", "number": 1, "path": "viewer", "ext": "js"}  # fmt: skip


def urls(app):  # type: ignore[no-untyped-def]
    """(endpoint, method, url) for every route, with made-up arguments."""
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        args = {a: DUMMY.get(a, "1.2.3") for a in rule.arguments}
        with app.test_request_context():
            from flask import url_for

            url = url_for(rule.endpoint, **args)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield rule.endpoint, method, url


# -- the hub ----------------------------------------------------------------------------


def test_hub_every_route_needs_a_login_and_is_declared(hub_app):
    app, _store, _tokens = hub_app
    client = app.test_client()
    checked = 0
    for endpoint, method, url in urls(app):
        roles = access.roles_for(endpoint)
        assert roles, f"{endpoint} names no roles in hub/access.py: nobody may use it"
        if roles == access.PUBLIC:
            continue
        r = client.open(url, method=method)
        if r.status_code == 302:
            assert "/login" in r.location, (endpoint, r.location)
        else:
            assert r.status_code == 401, (endpoint, method, r.status_code)
        checked += 1
    assert checked > 30
    # a made-up token is no better than none
    r = client.get("/api/worklist", headers={"Authorization": "Bearer rst_forged"})
    assert r.status_code == 401


def test_hub_roles_on_every_route(hub_app):
    app, store, tokens = hub_app
    client = app.test_client()
    for endpoint, method, url in urls(app):
        allowed = access.roles_for(endpoint)
        if allowed == access.PUBLIC:
            continue
        for role, token in tokens.items():
            r = client.open(url, method=method, headers={"Authorization": f"Bearer {token}"})
            if role in allowed:
                assert r.status_code not in (401, 403), (role, endpoint, r.status_code)
            else:
                assert r.status_code == 403, (role, endpoint, method, r.status_code)
    # what a radiologist may not do is written down
    refused = access.audit_rows(store, action="refused")
    assert any(r["username"] == "a-radiologist" and "/metrics" in r["detail"] for r in refused)
    assert any(r["username"] == "a-operator" and "/api/worklist" in r["detail"] for r in refused)


def _session(client, path: str = "/login") -> str:  # type: ignore[no-untyped-def]
    page = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf" (?:value|content)="([^"]+)"', page)[1]  # type: ignore[index]


def test_hub_forms_need_their_csrf_token(hub_app):
    app, _store, _tokens = hub_app
    c = app.test_client()
    token = _session(c)
    r = c.post("/login", data={"username": "a-radiologist", "password": PASSWORD})
    assert r.status_code == 400  # even the login form
    r = c.post("/login", data={"csrf": token, "username": "a-radiologist", "password": PASSWORD})
    assert r.status_code == 302
    token = _session(c, "/")  # a new session, a new token
    assert c.post("/read/1.2.3/claim", data={}).status_code == 400
    assert c.post("/api/studies/1.2.3/claim", json={"radiologist": "x"}).status_code == 400
    r = c.post("/read/1.2.3/claim", data={"csrf": token})
    assert r.status_code == 302  # checked, then refused as unknown on the page
    # a radiologist cannot act for another through the API
    r = c.post(
        "/api/studies/1.2.3/claim",
        json={"radiologist": "someone-else"},
        headers={"X-CSRF-Token": token},
    )
    assert r.status_code == 403


def test_hub_audit_log_is_append_only(hub_app):
    _app, store, _tokens = hub_app
    access.audit(store, "sign", "1.2.3", "report r1")
    refused = (sqlite3.DatabaseError, psycopg.Error)  # whichever engine holds the index
    with pytest.raises(refused, match="append-only"):
        store.db.execute("UPDATE audit SET username='nobody'")
    with pytest.raises(refused, match="append-only"):
        store.db.execute("DELETE FROM audit")
    assert access.audit_rows(store)[0]["action"] == "sign"


def test_hub_fleet_pages_show_html_as_text(hub_app):
    app, store, tokens = hub_app
    store.put_box_status("box-1", {"clinic": EVIL, "backlog_studies": 1, "version": EVIL}, True)
    c = app.test_client()
    auth = {"Authorization": f"Bearer {tokens['admin']}"}
    for path in ("/fleet", "/fleet/box-1", "/admin/audit"):
        body = c.get(path, headers=auth).get_data(as_text=True)
        assert "<script>window.pwned" not in body, path
    assert "&lt;script&gt;" in c.get("/fleet", headers=auth).get_data(as_text=True)
    # the table sorts by any column, both ways
    store.put_box_status("box-2", {"clinic": "B", "backlog_bytes": 9_000_000}, True)
    order = re.findall(
        r'tr class="box[^"]*" data-box="([^"]+)"',
        c.get("/fleet?sort=backlog_bytes&dir=desc", headers=auth).get_data(as_text=True),
    )
    assert order == ["box-2", "box-1"]
    order = re.findall(
        r'tr class="box[^"]*" data-box="([^"]+)"',
        c.get("/fleet?sort=backlog_bytes&dir=asc", headers=auth).get_data(as_text=True),
    )
    assert order == ["box-1", "box-2"]
    metrics = c.get("/metrics", headers=auth).get_data(as_text=True)
    assert 'clinic="<script>window.pwned=1</script>^Evil"' in metrics  # a label, quoted


# -- the box ------------------------------------------------------------------------


def _login(client, name: str) -> str:  # type: ignore[no-untyped-def]
    token = _session(client)
    r = client.post("/login", data={"csrf": token, "username": name, "password": PASSWORD})
    assert r.status_code == 302, r.get_data(as_text=True)[:300]
    return _session(client, "/")


def test_box_every_route_needs_a_login(box_app):
    app, _store = box_app
    c = app.test_client()
    checked = 0
    for endpoint, method, url in urls(app):
        if endpoint in ("clinic.login", "api.health"):
            continue
        r = c.open(url, method=method, headers={"Accept": "application/json"})
        assert r.status_code == 401, (endpoint, method, r.status_code)
        r = c.open(url, method=method)
        assert r.status_code in (302, 401), (endpoint, method, r.status_code)
        checked += 1
    assert checked > 20


def test_box_api_from_the_lan_needs_a_login_even_when_loopback_is_trusted(tmp_path):
    cfg_path = tmp_path / "edge.toml"
    cfg_path.write_text(f'data_dir = "{tmp_path / "data"}"\n')  # trust_loopback = true
    c = box_app(edge_config.load(cfg_path)).test_client()
    assert c.get("/api/studies").status_code == 200  # a script on the box itself
    lan = {"REMOTE_ADDR": "192.168.1.23"}
    assert c.get("/api/studies", environ_overrides=lan).status_code == 401
    assert c.get("/", environ_overrides=lan).status_code == 302
    assert c.get("/", environ_overrides={"REMOTE_ADDR": "127.0.0.1"}).status_code == 302


def test_box_forms_need_csrf_and_admin_pages_need_an_admin(box_app):
    app, _store = box_app
    c = app.test_client()
    token = _login(c, "asha")
    assert c.post("/study/1.2.3", data={"clinical_note": "x"}).status_code == 400
    assert c.post("/reports/r1/print", data={}).status_code == 400
    assert c.post("/upload", data={}).status_code == 400
    assert c.post("/language", data={"language": "kn"}).status_code == 400
    assert c.post("/language", data={"language": "kn", "csrf": token}).status_code == 302
    assert c.get("/audit").status_code == 403  # staff
    admin = app.test_client()
    _login(admin, "boss")
    assert admin.get("/audit").status_code == 200


def test_box_hostile_uploads_are_refused_and_harm_nothing(box_app, tmp_path):
    app, store = box_app
    c = app.test_client()
    token = _login(c, "asha")
    good = data_file("693_UNCI.dcm").read_bytes()
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("../../outside.dcm", good)
        z.writestr("/etc/cron.d/evil", b"* * * * * root sh")
        z.writestr("zeros.dcm", b"\0" * (64 << 20))  # 64 MiB of zeros: a ZIP bomb
        z.writestr("CT/ok.dcm", good)
    files = {
        "files": [
            (io.BytesIO(bomb.getvalue()), "cd.zip"),
            (io.BytesIO(b"not DICOM at all"), "../../../../tmp/readme.txt"),
            (io.BytesIO(good[: len(good) // 2]), "half.dcm"),
        ]
    }
    r = c.post(
        "/upload",
        data={**files, "csrf": token},
        headers={"Accept": "application/json"},
        content_type="multipart/form-data",
    )
    body = r.get_json()
    assert r.status_code == 200, body
    assert body["imported"] == 1  # CT/ok.dcm, byte for byte
    reasons = " | ".join(f"{x['file']}: {x['reason']}" for x in body["refused"])
    assert "outside" in reasons and "truncated" in reasons and "bomb" in reasons.lower()
    assert len(body["refused"]) >= 4, reasons
    assert not (tmp_path / "outside.dcm").exists() and not (tmp_path / "readme.txt").exists()
    assert list((store.root / "uploads").iterdir()) == []  # nothing left behind
    (study,) = c.get("/api/studies").get_json()["studies"]
    assert study["instances"] == 1
    # and the upload is in the audit log
    assert any(r["action"] == "upload" for r in accounts.audit_rows(store.db))


def test_box_pages_show_html_as_text(box_app):
    from edge import reports

    app, store = box_app
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.PatientName = EVIL
    ds.StudyDescription = "<img src=x onerror=alert(1)>"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    accepted = accept_file(store, io.BytesIO(data), len(data), "test", 1 << 30)
    uid = accepted.info.study_uid
    reports.keep(
        store,
        {"report_id": "r1", "version": 1, "study_uid": uid, "critical": True,
         "findings": EVIL, "impression": EVIL, "radiologist": EVIL},
        b"%PDF-1.4\n%%EOF\n",
    )  # fmt: skip
    c = app.test_client()
    _login(c, "boss")
    c.post(f"/study/{uid}", data={"clinical_note": EVIL, "csrf": _session(c, "/")})
    for path in ("/", f"/study/{uid}", "/reports", "/audit", "/clinic/studies.json"):
        body = c.get(path).get_data(as_text=True)
        assert "<script>window.pwned" not in body, path
        assert "<img src=x" not in body, path
    assert "&lt;script&gt;window.pwned" in c.get("/").get_data(as_text=True)


HOSTILE_NEXT = [
    "/%09/evil.example/x",  # a tab: browsers drop it and read //evil.example/x
    "/%5Cevil.example",  # a backslash: read as a slash
    "//evil.example",
    "https://evil.example/",
    "/%0d%0a/evil.example",
]


@pytest.mark.parametrize("target", HOSTILE_NEXT)
def test_no_open_redirect_after_login_at_either_end(box_app, hub_app, target):
    """``/login?next=...`` never sends a person off the site (it did for a tab)."""
    for app, name in ((box_app[0], "asha"), (hub_app[0], "a-radiologist")):
        c = app.test_client()
        token = _session(c)
        r = c.post(
            f"/login?next={target}",
            data={"csrf": token, "username": name, "password": PASSWORD},
        )
        assert r.status_code == 302
        where = r.headers["Location"]
        assert where.startswith("/") and not where.startswith("//"), (target, where)
        assert "evil.example" not in where, (target, where)
    # and a local one still works
    c = box_app[0].test_client()
    token = _session(c)
    r = c.post(
        "/login?next=/reports",
        data={"csrf": token, "username": "asha", "password": PASSWORD},
    )
    assert r.headers["Location"] == "/reports"


def test_the_login_page_speaks_the_clinics_language(tmp_path):
    """Before anyone logs in, the box's pages are in its ``language``; after, in the
    person's own; a new account takes the box's language unless told."""
    import subprocess
    import sys

    from edge import accounts
    from edge import config as edge_config
    from edge.web import create_app as make_box_app

    cfg_path = tmp_path / "edge.toml"
    cfg_path.write_text(f'language = "kn"\ndata_dir = "{tmp_path / "data"}"\n'
                        "[store]\nreserve_bytes = 0\n")  # fmt: skip
    app = make_box_app(edge_config.load(cfg_path))
    page = app.test_client().get("/login").get_data(as_text=True)
    assert '<html lang="kn">' in page and "ಲಾಗ್ ಇನ್" in page
    r = subprocess.run([sys.executable, "-m", "radsetu", "edge", "user", "add", "ravi",
                        "--config", str(cfg_path)], input="a-long-test-password\n",
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    store = app.config["RADSETU_STORE"]
    langs = dict(store.db.execute("SELECT username, language FROM users").fetchall())
    assert langs["ravi"] == "kn"
    accounts.add_user(store.db, "asha", "staff", PASSWORD, "hi")
    c = app.test_client()
    token = re.search(
        r'name="csrf" (?:value|content)="([^"]+)"', c.get("/login").get_data(as_text=True)
    )[1]  # type: ignore[index]
    c.post("/login", data={"csrf": token, "username": "asha", "password": PASSWORD})
    assert '<html lang="hi">' in c.get("/").get_data(as_text=True)
