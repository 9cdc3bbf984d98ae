"""Sessions that end and passwords that hold, at both ends (issue 14, points 8 and 9):
a cookie copied before logout, a demoted or disabled account's cookie and token, an
expired or revoked token, throttled guessing, a forced first change of password. The
apps run in-process on their real SQLite stores; the commands run as the operators
would run them."""

from __future__ import annotations

import functools
import io
import subprocess
import sys
import time

import pytest

from common import sessions
from edge import accounts
from hub import access, users
from tests.system.conftest import PASSWORD
from tests.system.test_access import _login, _session


def copy_of(client, app):  # type: ignore[no-untyped-def]
    """A second browser holding the same cookie: what a thief replays."""
    other = app.test_client()
    cookie = client.get_cookie("session")
    other.set_cookie("session", cookie.value)
    return other


def hub_login(client, name: str, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    token = _session(client)
    return client.post("/login", data={"csrf": token, "username": name, "password": password})


def test_box_cookie_is_worthless_after_logout(box_app):
    app, _store = box_app
    c = app.test_client()
    _login(c, "asha")
    thief = copy_of(c, app)
    assert thief.get("/").status_code == 200  # the copy works while the session lives
    assert c.get("/logout").status_code == 302
    r = thief.get("/")
    assert r.status_code == 302 and "/login" in r.location
    assert thief.get("/api/studies", headers={"Accept": "application/json"}).status_code == 401


def test_box_disable_and_new_password_end_every_session(box_app, tmp_path):
    app, store = box_app
    first, second = app.test_client(), app.test_client()
    _login(first, "asha")
    token = _login(second, "asha")
    # a change of password on one browser ends the other's session, not its own
    new = "a new long secret"
    r = second.post(
        "/account/password", data={"csrf": token, "current": PASSWORD, "new": new, "again": new}
    )
    assert r.status_code == 302
    assert first.get("/").status_code == 302
    assert second.get("/").status_code == 200
    # the admin disables the account: the session ends and the password no longer works
    assert accounts.disable_user(store.db, "asha") == 1
    assert second.get("/").status_code == 302
    c = app.test_client()
    r = c.post("/login", data={"csrf": _session(c), "username": "asha", "password": new})
    assert r.status_code == 200 and "/login" not in r.headers.get("Location", "")


def test_box_guessing_is_throttled_and_no_typed_secret_is_kept(box_app, caplog):
    app, store = box_app
    c = app.test_client()
    token = _session(c)
    typed = "correct-horse-typed-as-a-name"
    c.post("/login", data={"csrf": token, "username": typed, "password": "x"})
    for _ in range(sessions.PER_USER_ADDRESS):
        r = c.post("/login", data={"csrf": token, "username": "asha", "password": "wrong guess"})
        assert r.status_code == 200
    # locked: even the right password is not checked now, from this address
    r = c.post("/login", data={"csrf": token, "username": "asha", "password": PASSWORD})
    assert r.status_code == 429
    # ... but the clinic's own desk, at another address, still gets in
    desk = app.test_client()
    r = desk.post(
        "/login",
        data={"csrf": _session(desk), "username": "asha", "password": PASSWORD},
        environ_overrides={"REMOTE_ADDR": "192.168.1.40"},
    )
    assert r.status_code == 302
    actions = [(r["username"], r["action"]) for r in accounts.audit_rows(store.db)]
    assert ("asha", "login_locked") in actions and ("?", "login_failed") in actions
    rows = str(accounts.audit_rows(store.db))
    assert typed not in rows and typed not in caplog.text


def test_box_password_from_provisioning_is_changed_first(box_app):
    app, store = box_app
    accounts.add_user(store.db, "clinic-admin", "admin", PASSWORD, must_change=True)
    c = app.test_client()
    r = c.post(
        "/login", data={"csrf": _session(c), "username": "clinic-admin", "password": PASSWORD}
    )
    assert r.status_code == 302
    r = c.get("/")
    assert r.status_code == 302 and r.location.endswith("/account/password")
    assert c.get("/audit").status_code == 302
    assert c.get("/api/studies").status_code == 403
    token = _session(c, "/account/password")
    new = "clinic chosen pw"
    r = c.post(
        "/account/password", data={"csrf": token, "current": PASSWORD, "new": new, "again": new}
    )
    assert r.status_code == 302
    assert c.get("/").status_code == 200 and c.get("/audit").status_code == 200


def test_hub_demoted_radiologist_cookie_and_token_stop_at_once(hub_app):
    app, store, tokens = hub_app
    c = app.test_client()
    assert hub_login(c, "a-radiologist").status_code == 302
    thief = copy_of(c, app)
    bearer = {"Authorization": f"Bearer {tokens['radiologist']}"}
    assert thief.get("/").status_code == 200
    assert c.get("/api/worklist", headers=bearer).status_code == 200
    users.add(store, "a-radiologist", "operator", PASSWORD)  # demoted
    r = thief.get("/")
    assert r.status_code == 302 and "/login" in r.location
    # the token acts with the account's role as it is now
    assert c.get("/api/worklist", headers=bearer).status_code == 403


def test_hub_logout_disable_and_token_expiry_and_revocation(hub_app):
    app, store, tokens = hub_app
    c = app.test_client()
    hub_login(c, "a-admin")
    thief = copy_of(c, app)
    c.get("/logout")
    assert thief.get("/").status_code == 302
    # a token that has run out, one revoked, and a disabled account's
    short = access.add_token(store, "a-admin", "short", days=1 / 86400)
    kept = access.add_token(store, "a-admin", "kept")
    time.sleep(1.5)
    assert c.get("/api/worklist", headers={"Authorization": f"Bearer {short}"}).status_code == 401
    assert c.get("/api/worklist", headers={"Authorization": f"Bearer {kept}"}).status_code == 200
    assert access.revoke_tokens(store, "a-admin", "kept") == 1
    assert c.get("/api/worklist", headers={"Authorization": f"Bearer {kept}"}).status_code == 401
    op = {"Authorization": f"Bearer {tokens['operator']}"}
    assert c.get("/api/fleet", headers=op).status_code == 200
    users.disable(store, "a-operator")
    assert c.get("/api/fleet", headers=op).status_code == 401
    assert hub_login(app.test_client(), "a-operator").status_code == 200  # refused


def test_hub_guessing_is_throttled(hub_app):
    app, _store, _tokens = hub_app
    c = app.test_client()
    for _ in range(sessions.PER_USER_ADDRESS):
        assert hub_login(c, "a-admin", "wrong guess").status_code == 200
    assert hub_login(c, "a-admin").status_code == 429


@pytest.mark.parametrize("side", ["edge", "hub"])
def test_user_disable_and_token_revoke_commands(tmp_path, side):
    cfg = tmp_path / f"{side}.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    run = [sys.executable, "-m", "radsetu", side]
    role = ["--role", "staff" if side == "edge" else "radiologist"]
    add = subprocess.run([*run, "user", "add", "asha", *role, "--config", str(cfg)],
                         input=PASSWORD + "\n", capture_output=True, text=True)  # fmt: skip
    assert add.returncode == 0, add.stderr
    off = subprocess.run([*run, "user", "disable", "asha", "--config", str(cfg)],
                         capture_output=True, text=True)  # fmt: skip
    assert off.returncode == 0 and "disabled" in off.stdout, off.stderr
    nobody = subprocess.run([*run, "user", "disable", "nobody", "--config", str(cfg)],
                            capture_output=True, text=True)  # fmt: skip
    assert nobody.returncode == 2 and "no account" in nobody.stderr
    if side == "hub":
        made = subprocess.run([*run, "token", "add", "asha", "--config", str(cfg)],
                              capture_output=True, text=True)  # fmt: skip
        assert made.stdout.startswith("rst_")
        gone = subprocess.run([*run, "token", "revoke", "asha", "--config", str(cfg)],
                              capture_output=True, text=True)  # fmt: skip
        assert gone.returncode == 0 and "1 API tokens" in gone.stdout


# -- every read of patient data is audited (point 13) ------------------------------------


def test_box_reads_are_audited_for_loopback_callers_too(tmp_path):
    from devkit.corpus import pydicom_file
    from edge import config as edge_config
    from edge.intake import accept_file
    from edge.web import create_app as box_app

    cfg_path = tmp_path / "edge.toml"
    cfg_path.write_text(f'data_dir = "{tmp_path / "data"}"\n[store]\nreserve_bytes = 0\n')
    app = box_app(edge_config.load(cfg_path))  # trust_loopback: scripts need no login
    store = app.config["RADSETU_STORE"]
    data = pydicom_file("CT_small.dcm").read_bytes()
    accept_file(store, io.BytesIO(data), len(data), "test", 1 << 30)
    c = app.test_client()
    (study,) = c.get("/api/studies").get_json()["studies"]
    uid = study["study_uid"]
    assert c.get(f"/api/studies/{uid}").status_code == 200
    assert c.get("/api/reports").status_code == 200
    for _ in range(3):  # a script polling: one row per caller and read, not one per poll
        c.get("/api/studies")
    rows = [(r["username"], r["action"], r["study_uid"]) for r in accounts.audit_rows(store.db)]
    assert rows.count(("loopback", "list_studies", "")) == 1
    assert ("loopback", "read_study", uid) in rows
    assert ("loopback", "list_reports", "") in rows
    assert c.get("/api/studies/9.9.9").status_code == 404
    assert ("loopback", "read_study", "9.9.9") not in [
        (r["username"], r["action"], r["study_uid"]) for r in accounts.audit_rows(store.db)
    ]


def test_hub_dicomweb_images_tags_and_drafts_reads_are_audited(hub_app):
    from devkit.corpus import pydicom_file
    from hub.ingest import take_chunk, take_manifest
    from wire.codec import pack_bytes
    from wire.manifest import Priority

    app, store, tokens = hub_app
    m, chunks = pack_bytes(
        [("1.2.3.1", pydicom_file("CT_small.dcm").read_bytes())], chunk_size=1 << 20,
        transfer_id="t1", pixel_effort=0, box_id="box-1", study_uid="1.2.3",
        priority=Priority.ROUTINE,
    )  # fmt: skip
    take_manifest(store, m.to_json(), "test")
    for i, chunk in enumerate(chunks):
        take_chunk(store, "t1", i, chunk, "test")
    c = app.test_client()
    bearer = {"Authorization": f"Bearer {tokens['radiologist']}"}
    for path in (
        "/dicomweb/studies",
        "/dicomweb/studies/1.2.3/metadata",
        "/api/studies/1.2.3/instances/1.2.3.1/rendered",
        "/api/studies/1.2.3/instances/1.2.3.1/tags",
        "/api/studies/1.2.3/reports",
        "/api/worklist",
    ):
        r = c.get(path, headers=bearer)
        assert r.status_code == 200, (path, r.status_code)
    rows = {(r["username"], r["action"], r["study_uid"]) for r in access.audit_rows(store)}
    for action, uid in (
        ("dicomweb", ""),
        ("view", "1.2.3"),  # a study opened through DICOMweb is a view
        ("read_image", "1.2.3"),
        ("read_tags", "1.2.3"),
        ("read_reports", "1.2.3"),
        ("list_studies", ""),
    ):
        assert ("a-radiologist", action, uid) in rows, (action, uid)


# -- headers, and the client's address behind a TLS proxy (point 11) ---------------------


def test_pages_cannot_be_framed_and_run_only_their_own_scripts(box_app, hub_app):
    import re

    seen_scripts = 0
    for app, name in ((box_app[0], "asha"), (hub_app[0], "a-radiologist")):
        c = app.test_client()
        _login(c, name) if app is box_app[0] else hub_login(c, name)
        r = c.get("/")
        assert r.status_code == 200
        assert r.headers["X-Frame-Options"] == "DENY"
        csp = r.headers["Content-Security-Policy"]
        script_src = csp.split("script-src")[1].split(";")[0]
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in script_src
        nonce = re.search(r"'nonce-([^']+)'", script_src)[1]  # type: ignore[index]
        page = r.get_data(as_text=True)
        scripts = re.findall(r"<script([^>]*)>", page)
        assert all(f'nonce="{nonce}"' in s for s in scripts), scripts
        seen_scripts += len(scripts)
        assert not re.findall(r"<[a-z]+ [^>]*\bon[a-z]+=", page)  # no inline handlers
        assert "Strict-Transport-Security" not in r.headers  # plain HTTP: no HSTS
    assert seen_scripts


@pytest.mark.parametrize("side", ["edge", "hub"])
def test_behind_a_tls_proxy_the_audit_has_the_persons_address(
    tmp_path, side, monkeypatch, another_hub_index
):
    from edge import config as edge_config
    from edge.web import create_app as box_app
    from hub import config as hub_config
    from hub.store import FileHubStore
    from hub.web import create_app as hub_app

    proxy = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    for behind in (True, False):
        for name, value in another_hub_index().items():  # each hub its own index
            monkeypatch.setenv(name, value)
        cfg_path = tmp_path / f"{side}-{behind}.toml"
        data = tmp_path / f"data-{behind}"
        cfg_path.write_text(
            f'data_dir = "{data}"\n[web]\nbehind_tls_proxy = {str(behind).lower()}\n'
        )
        if side == "edge":
            app = box_app(edge_config.load(cfg_path))
            store = app.config["RADSETU_STORE"]
            accounts.add_user(store.db, "asha", "staff", PASSWORD)
            rows = functools.partial(accounts.audit_rows, store.db)
        else:
            app = hub_app(hub_config.load(cfg_path))
            hstore = FileHubStore(data)
            users.add(hstore, "asha", "radiologist", PASSWORD)
            rows = functools.partial(access.audit_rows, hstore)
        c = app.test_client()
        token = _session(c)
        r = c.post("/login", data={"csrf": token, "username": "asha", "password": PASSWORD},
                   headers=proxy)  # fmt: skip
        assert r.status_code == 302
        (login_row,) = [x for x in rows() if x["action"] == "login"]
        cookie = r.headers["Set-Cookie"]
        if behind:
            assert login_row["address"] == "203.0.113.9"
            assert "Secure" in cookie and r.headers["Strict-Transport-Security"]
        else:  # reached directly: a client's X-Forwarded-For is not believed
            assert login_row["address"] == "127.0.0.1"
            assert "Secure" not in cookie and "Strict-Transport-Security" not in r.headers


def test_hub_password_change_ends_the_other_sessions(hub_app):
    app, store, _tokens = hub_app
    first, second = app.test_client(), app.test_client()
    hub_login(first, "a-radiologist")
    hub_login(second, "a-radiologist")
    token = _session(second, "/account/password")
    new = "a brand new secret"

    def change(current: str, again: str):  # type: ignore[no-untyped-def]
        form = {"csrf": token, "current": current, "new": new, "again": again}
        return second.post("/account/password", data=form)

    wrong = change("not it", new)
    assert wrong.status_code == 200 and "current password is wrong" in wrong.get_data(as_text=True)
    assert "differ" in change(PASSWORD, "x" * 12).get_data(as_text=True)
    assert change(PASSWORD, new).status_code == 302
    assert first.get("/").status_code == 302  # the other browser's session ended
    assert second.get("/").status_code == 200
    assert users.authenticate(store, "a-radiologist", new) == "radiologist"


def test_sms_replies_that_match_nothing_lock_their_number(tmp_path):
    """A phone that keeps guessing confirmation codes is not listened to for a while;
    other phones are, and the lock is in the audit log."""
    from hub import config as hub_config
    from hub.confirm import SMS_GUESSES
    from hub.store import FileHubStore
    from hub.web import create_app as make_hub_app

    cfg = tmp_path / "hub.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "hub"}"\n[mqtt]\nenabled = false\n'
                   '[sms]\ninbound_key = "a-long-inbound-key"\n')  # fmt: skip
    app = make_hub_app(hub_config.load(cfg))
    c = app.test_client()

    def reply(phone: str, text: str) -> str:
        r = c.get("/api/sms/inbound", query_string={"key": "a-long-inbound-key",
                                                    "from": phone, "text": text})  # fmt: skip
        assert r.status_code == 200
        return r.get_data(as_text=True)

    for guess in range(SMS_GUESSES):
        assert "no open critical finding" in reply("+919900000001", f"YES {1000 + guess}")
    assert "too many replies" in reply("+919900000001", "YES 4242")
    assert "no open critical finding" in reply("+919900000002", "YES 4242")  # another phone
    store = FileHubStore(tmp_path / "hub")
    try:
        rows = access.audit_rows(store, action="sms_locked")
        assert [r["detail"] for r in rows] == ["+919900000001"]
    finally:
        store.close()
