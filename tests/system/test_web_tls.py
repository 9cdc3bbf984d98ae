"""The pages over TLS as provisioned: the webproxy role's nginx site, run by a real nginx
in front of a real box and a real hub (each with ``web.behind_tls_proxy``), with the
certificate the ca role issues. The browser's view: the fleet CA's certificate holds
for the box's name and address, plain HTTP only redirects, cookies are Secure, HSTS and
the CSP come through, the audit log has the person's own address (a forged
X-Forwarded-For is dropped), and the app's own upload limit still applies."""

from __future__ import annotations

import http.client
import json
import os
import re
import sqlite3
import ssl
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from devkit.box import free_port, wait_port
from devkit.broker import Hub
from hub.store import FileHubStore
from tests.conftest import need
from tests.helpers import start_box
from tests.system.test_provisioning import inventory, playbook

PASSWORD = "a-long-test-password"
PERSON = "127.0.0.7"  # the person's machine (a loopback address of its own)


def provision_proxy(tmp_path: Path, upstream: int) -> tuple[Path, int, int]:
    """The ca role's certificate for this host (its name and its address) and the
    webproxy role's site for ``upstream``, written into a folder; (pki, https, http)."""
    https, plain = free_port(), free_port()
    inv = inventory(tmp_path, {}, {})
    book = tmp_path / "proxy.yml"
    etc = tmp_path / "nginx-etc"
    pki = tmp_path / "pki"
    role_vars = {
        "webproxy_etc": str(etc),
        "webproxy_manage_packages": False,
        "webproxy_listen": ["127.0.0.1"],
        "webproxy_https_port": https,
        "webproxy_http_port": plain,
        "webproxy_upstream_port": upstream,
        "webproxy_cert_file": str(pki / "web-host.crt"),
        "webproxy_key_file": str(pki / "web-host.key"),
    }
    book.write_text(
        "- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.include_role: {name: ca}\n"
        "      vars: {ca_cert_cn: web-host, ca_cert_dns: [localhost, 127.0.0.1]}\n"
        "    - ansible.builtin.include_role: {name: webproxy}\n"
        f"      vars: {json.dumps(role_vars)}\n"
    )
    playbook("-i", str(inv), str(book))
    return pki, https, plain


@pytest.fixture
def nginx(tmp_path):
    """Start nginx on the site(s) the role wrote under ``tmp_path/nginx-etc``."""
    procs: list[subprocess.Popen] = []  # type: ignore[type-arg]

    def start(https: int) -> None:
        run = tmp_path / "nginx-run"
        run.mkdir()
        conf = run / "nginx.conf"
        user = "user root;\n" if os.getuid() == 0 else ""
        temps = "".join(
            f"    {k}_temp_path {run / k};\n"
            for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf.write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {run / 'nginx.pid'};\n"
            f"error_log {run / 'error.log'} info;\nevents {{ worker_connections 64; }}\n"
            f"http {{\n    access_log off;\n{temps}"
            f"    include {tmp_path / 'nginx-etc'}/conf.d/*.conf;\n}}\n"
        )
        p = subprocess.Popen([need("nginx"), "-p", str(run), "-c", str(conf),
                              "-e", str(run / "error.log")])  # fmt: skip
        procs.append(p)
        wait_port(https, proc=p)

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


def tls(pki: Path) -> ssl.SSLContext:
    """A browser's view: trusts the fleet CA (installed on the clinic's PCs) only."""
    return ssl.create_default_context(cafile=str(pki / "ca.crt"))


def login(
    host: str, https: int, pki: Path, username: str
) -> tuple[http.client.HTTPResponse, bytes]:
    """Log in from the person's own address, sending a forged X-Forwarded-For."""
    forged = {"X-Forwarded-For": "203.0.113.66"}

    def conn() -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(host, https, context=tls(pki), timeout=20,
                                           source_address=(PERSON, 0))  # fmt: skip

    c = conn()
    c.request("GET", "/login", headers=forged)
    first = c.getresponse()
    page = first.read().decode()
    assert first.status == 200, page
    cookie = first.getheader("Set-Cookie", "").split(";")[0]
    token = re.search(r'name="csrf" (?:value|content)="([^"]+)"', page)[1]  # type: ignore[index]
    body = urllib.parse.urlencode({"csrf": token, "username": username, "password": PASSWORD})
    form = {**forged, "Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
    c.request("POST", "/login", body=body, headers=form)
    r = c.getresponse()
    return r, r.read()


def check_proxy(pki: Path, https: int, plain: int) -> None:
    """What every browser sees of either side through the proxy."""
    for host in ("localhost", "127.0.0.1"):  # the name and the address in the certificate
        c = http.client.HTTPSConnection(host, https, context=tls(pki), timeout=20)
        c.request("GET", "/login")
        r = c.getresponse()
        r.read()
        assert r.status == 200
        assert r.getheader("Strict-Transport-Security", "").startswith("max-age=")
        assert "frame-ancestors 'none'" in r.getheader("Content-Security-Policy", "")
        assert r.getheader("X-Frame-Options") == "DENY"
        assert "nginx/" not in r.getheader("Server", "")  # no version for an attacker
    # a certificate from another CA is refused by the browser
    other = ssl.create_default_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        c = http.client.HTTPSConnection("localhost", https, context=other, timeout=20)
        c.request("GET", "/login")
    # plain HTTP answers nothing but the way to HTTPS
    c = http.client.HTTPConnection("localhost", plain, timeout=20)
    c.request("GET", "/login?next=/studies", headers={"X-Forwarded-Proto": "https"})
    r = c.getresponse()
    assert r.status == 301
    assert r.getheader("Location") == f"https://localhost:{https}/login?next=/studies"


def test_the_clinics_page_through_the_provisioned_tls_proxy(tmp_path, nginx, boxes):
    box = start_box(boxes, tmp_path / "box", mqtt=None,
                    web={"host": "127.0.0.1", "behind_tls_proxy": True})  # fmt: skip
    box.add_user("asha", PASSWORD)
    pki, https, plain = provision_proxy(tmp_path, box.web_port)
    nginx(https)
    check_proxy(pki, https, plain)

    r, _ = login("localhost", https, pki, "asha")
    assert r.status == 302
    cookie = r.getheader("Set-Cookie", "")
    assert "Secure" in cookie and "HttpOnly" in cookie
    with sqlite3.connect(box.data_dir / "index.db") as db:
        (address,) = db.execute(
            "SELECT address FROM audit WHERE action='login' ORDER BY id DESC"
        ).fetchone()
    assert address == PERSON  # not the proxy's 127.0.0.1, not the forged header

    # before login, a big body is refused by the app's own small limit: nginx passes it
    # through unbuffered and leaves the limits to the box
    c = http.client.HTTPSConnection("localhost", https, context=tls(pki), timeout=20)
    c.request("POST", "/upload", body=b"x" * (3 << 20),
              headers={"Content-Type": "application/octet-stream"})  # fmt: skip
    assert c.getresponse().status == 413


def test_the_reading_room_through_the_provisioned_tls_proxy(tmp_path, nginx, broker):
    hub = Hub(tmp_path / "hub", broker.mqtt_config("hub"), web={"behind_tls_proxy": True})
    hub.start()
    try:
        hub.add_user("dr-rao", "radiologist", PASSWORD)
        pki, https, plain = provision_proxy(tmp_path, hub.web_port)
        nginx(https)
        check_proxy(pki, https, plain)
        r, _ = login("localhost", https, pki, "dr-rao")
        assert r.status == 302
        assert "Secure" in r.getheader("Set-Cookie", "")
        store = FileHubStore(hub.data_dir)  # whichever engine holds its index
        (address,) = store.db.execute(
            "SELECT address FROM audit WHERE action='login' ORDER BY id DESC"
        ).fetchone()
        store.close()
        assert address == PERSON
    finally:
        hub.stop()
