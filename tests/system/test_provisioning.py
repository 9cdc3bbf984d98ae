"""Field provisioning: the Ansible tree is lint-clean (production profile) and its
playbooks parse; the broker role's configuration, run by a real Mosquitto, keeps each
box to its own topics and refuses clients without the fleet's certificate; and, in a
throwaway Debian root made with debootstrap, the image stage and the roles really run
(users, files, units as expected; a second run changes nothing), the first boot makes
the image a box, and the box answers C-ECHO."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from common.passwords import check_password
from devkit.box import free_port, wait_port
from devkit.broker import Hub
from tests.conftest import need, storescu, wait_for
from tests.helpers import ROOT, delivered, make_study, start_box
from tests.system.rootfs import PREBUILD, Prebuild

ANSIBLE = ROOT / "ansible"
VENV_BIN = Path(sys.executable).parent


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
    }


def playbook(*args: str, check: bool = True) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    r = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), *args],
        cwd=ANSIBLE,
        env=env(),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if check and r.returncode != 0:
        raise AssertionError(f"ansible-playbook {args} failed:\n{r.stdout[-4000:]}\n{r.stderr}")
    return r


def recap(out: str) -> dict[str, int]:
    line = next(x for x in out.splitlines()[::-1] if " ok=" in x)
    return {k: int(v) for k, v in (p.split("=") for p in line.split(":", 1)[1].split())}


def test_ansible_lint_production_and_syntax():
    r = subprocess.run(
        [str(VENV_BIN / "ansible-lint"), "--profile", "production"],
        cwd=ANSIBLE,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "passed" in (r.stdout + r.stderr)
    for book in sorted((ANSIBLE / "playbooks").glob("*.yml")):
        playbook("--syntax-check", str(book.relative_to(ANSIBLE)))


def test_scripts_pass_shellcheck():
    scripts = [
        *sorted((ROOT / "firmware-image").rglob("*.sh")),
        ROOT / "firmware-image/stage-radsetu/00-radsetu/files/radsetu-firstboot",
        *sorted((ROOT / "scripts").glob("*.sh")),
    ]
    r = subprocess.run([need("shellcheck"), *map(str, scripts)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


# -- the broker as the role makes it --------------------------------------------------


SECRETS = {
    "radsetu_ca_passphrase": "a-test-ca-passphrase",
    "radsetu_clinic_admin_password": "a-test-password-1",
    "radsetu_hub_admin_password": "a-test-password-2",
}


def vault(tmp_path: Path) -> list[str]:
    """The secrets in an Ansible Vault file with a password made now (as in the field:
    only the encrypted file exists); the arguments that open it."""
    password = tmp_path / "vault-password"
    password.write_text(os.urandom(16).hex())
    plain = tmp_path / "vault.yml"
    plain.write_text("".join(f"{k}: {v}\n" for k, v in SECRETS.items()))
    subprocess.run(
        [str(VENV_BIN / "ansible-vault"), "encrypt", "--vault-password-file", str(password),
         str(plain)],
        check=True, capture_output=True, env=env(),
    )  # fmt: skip
    assert plain.read_text().startswith("$ANSIBLE_VAULT;")
    return ["-e", f"@{plain}", "--vault-password-file", str(password)]


def inventory(tmp_path: Path, hosts: dict, shared: dict, secrets: bool = True) -> Path:  # type: ignore[type-arg]
    inv = {"all": {"children": {g: {"hosts": {h: None for h in hs}} for g, hs in hosts.items()}}}
    inv["all"]["vars"] = {
        "radsetu_hub_box_id": "hub",
        "radsetu_pki_dir": str(tmp_path / "pki"),
        "radsetu_ohif_tarball": str(ROOT / "build/cache/ohif-app-3.13.2.tgz"),
        "radsetu_ntp_servers": ["pool.ntp.org"],
        "radsetu_start_services": False,
        **(SECRETS if secrets else {}),
        **shared,
    }
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(inv))
    return path


def issue(tmp_path: Path, inv: Path, *names: str, extra: tuple[str, ...] = ()) -> None:
    """Certificates from the fleet CA for more identities (the ca role, as a box gets)."""
    book = tmp_path / "issue.yml"
    book.write_text(
        "- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n"
        + "".join(
            f"    - ansible.builtin.include_role: {{name: ca}}\n      vars: {{ca_cert_cn: {n}}}\n"
            for n in names
        )
    )
    playbook("-i", str(inv), str(book), *extra)


@pytest.fixture(scope="module")
def role_broker(tmp_path_factory):
    """Mosquitto running the configuration the broker role wrote (into a folder); one
    for the module (the role's run takes most of a minute). A test that runs the role
    again changes only what no other test looks at (box-c's revocation)."""
    tmp_path = tmp_path_factory.mktemp("role-broker")
    port = free_port()
    etc = tmp_path / "etc-mosquitto"
    inv = inventory(
        tmp_path,
        {"brokers": ["broker-1"]},
        {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "ansible_become": False,
            "broker_etc": str(etc),
            "broker_manage_packages": False,
            "broker_group": subprocess.run(
                ["id", "-gn"], capture_output=True, text=True
            ).stdout.strip(),
            "broker_listen": "127.0.0.1",
            "radsetu_broker_host": "localhost",
            "radsetu_broker_port": port,
        },
        secrets=False,
    )
    opened = vault(tmp_path)
    playbook("-i", str(inv), "playbooks/site.yml", *opened)
    issue(tmp_path, inv, "box-a", "box-b", "box-c", "hub", extra=tuple(opened))
    main = tmp_path / "mosquitto.conf"
    main.write_text(f"user {os.environ.get('USER', 'root')}\npersistence false\n"
                    f"log_dest stderr\ninclude_dir {etc}/conf.d\n")  # fmt: skip
    log = open(tmp_path / "mosquitto.log", "wb")  # noqa: SIM115 - closed below
    procs = [subprocess.Popen([need("mosquitto"), "-c", str(main)], stdout=log, stderr=log)]
    wait_port(port, proc=procs[0])

    def rerun(**extra: object) -> None:
        """Run the playbook again with ``extra`` variables, and restart the broker (as
        the role's handler does)."""
        playbook("-i", str(inv), "playbooks/site.yml", *opened, "-e", json.dumps(extra))
        procs[0].terminate()
        procs[0].wait()
        procs[0] = subprocess.Popen([need("mosquitto"), "-c", str(main)], stdout=log, stderr=log)
        wait_port(port, proc=procs[0])

    yield port, tmp_path / "pki", etc, rerun
    procs[0].terminate()
    procs[0].wait()
    log.close()


def client(pki: Path, who: str | None, port: int, ca: Path | None = None,  # type: ignore[no-untyped-def]
           client_id: str | None = None):  # fmt: skip
    c = mqtt.Client(CallbackAPIVersion.VERSION2,
                    client_id=client_id or f"t-{who}-{time.monotonic_ns()}",
                    protocol=mqtt.MQTTv5)  # fmt: skip
    c.tls_set(
        ca_certs=str(ca or pki / "ca.crt"),
        certfile=str(pki / f"{who}.crt") if who else None,
        keyfile=str(pki / f"{who}.key") if who else None,
    )
    c.connect("localhost", port, keepalive=10)
    return c


def refused(pki: Path, who: str | None, port: int, ca: Path | None = None) -> bool:
    """True when the broker never lets this client in (TLS or CONNACK refusal)."""
    try:
        c = client(pki, who, port, ca)
    except (ssl.SSLError, OSError):
        return True
    c.loop_start()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not c.is_connected():
        time.sleep(0.1)
    connected = c.is_connected()
    c.loop_stop()
    c.disconnect()
    return not connected


def test_broker_acl_keeps_each_box_to_its_own_topics(role_broker, tmp_path, boxes):
    port, pki, etc, _rerun = role_broker
    conf = (etc / "conf.d" / "radsetu.conf").read_text()
    assert "allow_anonymous false" in conf and "require_certificate true" in conf

    got: list[str] = []
    hub = client(pki, "hub", port)
    hub.on_message = lambda _c, _u, m: got.append(m.topic)
    hub.subscribe("radsetu/v1/#", qos=1)
    hub.loop_start()

    suback: list = []  # type: ignore[type-arg]
    puback: dict = {}  # type: ignore[type-arg]
    a = client(pki, "box-a", port)
    a.on_subscribe = lambda _c, _u, _m, codes, _p: suback.extend(codes)
    a.on_publish = lambda _c, _u, mid, rc, _p: puback.__setitem__(mid, rc)
    a.loop_start()
    try:
        wait_for(lambda: a.is_connected() and hub.is_connected(), 10, "connections")
        # Mosquitto grants the subscription but never delivers what the ACL forbids
        a_got: list[str] = []
        a.on_message = lambda _c, _u, m: a_got.append(m.topic)
        a.subscribe([("radsetu/v1/box-b/#", 1), ("radsetu/v1/box-a/#", 1)])
        wait_for(lambda: suback, 10, "the SUBACK")
        hub.publish("radsetu/v1/box-b/down/report", b"for B only", qos=1).wait_for_publish(5)
        hub.publish("radsetu/v1/box-a/down/ack", b"for A", qos=1).wait_for_publish(5)
        wait_for(lambda: "radsetu/v1/box-a/down/ack" in a_got, 10, "A's own message")
        other = a.publish("radsetu/v1/box-b/up/manifest", b"{}", qos=1).mid
        own = a.publish("radsetu/v1/box-a/status", b"{}", qos=1).mid
        wait_for(lambda: other in puback and own in puback, 10, "the PUBACKs")
        assert puback[other].is_failure and not puback[own].is_failure
        wait_for(lambda: "radsetu/v1/box-a/status" in got, 10, "box A's own message")
        time.sleep(0.5)
        assert "radsetu/v1/box-b/up/manifest" not in got  # A cannot write as B
        assert not [t for t in a_got if "/box-b/" in t]  # nor read what is B's
    finally:
        a.loop_stop()
        a.disconnect()

    # no certificate, or one from another CA: never connected
    assert refused(pki, None, port)
    rogue = tmp_path / "rogue"
    rogue.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=box-a", "-keyout", str(rogue / "box-a.key"),
         "-out", str(rogue / "box-a.crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    assert refused(rogue, "box-a", port, ca=pki / "ca.crt")
    assert not refused(pki, "box-b", port)  # the control: a real box gets in
    hub.loop_stop()
    hub.disconnect()

    # box B's certificate asking for the hub's client id, or box A's, takes over
    # neither session: the broker gives each client its certificate's name as its id
    kicked: list[str] = []
    victims = {}
    for who, cid in (("hub", "radsetu-hub-1"), ("box-a", "radsetu-box-box-a")):
        v = client(pki, who, port, client_id=cid)
        v.on_disconnect = lambda _c, _u, _f, rc, _p, who=who: kicked.append(who)
        v.loop_start()
        victims[who] = v
    wait_for(lambda: all(v.is_connected() for v in victims.values()), 10, "the victims")
    for cid in ("radsetu-hub-1", "radsetu-box-box-a"):
        thief = client(pki, "box-b", port, client_id=cid)
        thief.loop_start()
        wait_for(thief.is_connected, 10, "box B's connection")
        time.sleep(1)
        thief.loop_stop()
        thief.disconnect()
    assert kicked == [] and all(v.is_connected() for v in victims.values())
    for v in victims.values():
        v.loop_stop()
        v.disconnect()

    # and box A's own sync works through it, end to end, with a real hub
    def mqtt_cfg(who: str) -> dict[str, object]:
        files = {"ca_file": pki / "ca.crt", "cert_file": pki / f"{who}.crt",
                 "key_file": pki / f"{who}.key"}  # fmt: skip
        return {
            "host": "localhost",
            "port": port,
            "tls": True,
            **{k: str(v) for k, v in files.items()},
        }

    real_hub = Hub(tmp_path / "hub", mqtt_cfg("hub")).start()
    try:
        box = start_box(boxes, tmp_path / "box-a", mqtt_cfg("box-a"), box_id="box-a")
        files, uid = make_study(tmp_path, "study", 2)
        storescu(box.dicom_port, files)
        wait_for(lambda: delivered(box, uid), 60, "box A's study at the hub")
    finally:
        real_hub.stop()


def test_the_broker_refuses_an_oversized_packet(role_broker):
    """A box publishing 10 MiB in one packet is disconnected and nothing reaches the hub;
    a chunk of the largest allowed size (8 MiB) goes through."""
    port, pki, _etc, _rerun = role_broker
    got: list[int] = []
    subscribed = threading.Event()
    hub = client(pki, "hub", port)
    # chunks only (the broker also keeps the statuses other tests left, retained)
    hub.on_message = lambda _c, _u, m: m.topic.endswith("/up/chunk") and got.append(len(m.payload))
    hub.on_subscribe = lambda *_a: subscribed.set()
    hub_drops: list[str] = []
    hub.on_disconnect = lambda _c, _u, _f, rc, _p: hub_drops.append(str(rc))
    hub.subscribe("radsetu/v1/#", qos=1)
    hub.loop_start()
    a = client(pki, "box-a", port)
    a.loop_start()
    # Generous waits: a loaded CI machine moves 8 MiB through TLS twice far slower
    # than an idle one; each wait ends as soon as its condition holds.
    try:
        wait_for(lambda: a.is_connected() and subscribed.is_set(), 60, "connections")
        a.publish("radsetu/v1/box-a/up/chunk", bytes(10 << 20), qos=1)
        wait_for(lambda: not a.is_connected(), 60, "the broker to drop box A")
        a.loop_stop()  # no reconnecting to send the same 10 MiB again
        ok = client(pki, "box-b", port)
        ok.loop_start()
        wait_for(ok.is_connected, 60, "box B")
        sent = ok.publish("radsetu/v1/box-b/up/chunk", bytes(8 << 20), qos=1)
        sent.wait_for_publish(120)
        assert sent.is_published(), "the broker never acknowledged box B's 8 MiB chunk"
        wait_for(lambda: got or hub_drops, 120, "box B's chunk at the hub")
        assert got == [8 << 20], f"the hub's connection dropped: {hub_drops}"
        ok.loop_stop()
        ok.disconnect()
    finally:
        a.loop_stop()
        hub.loop_stop()
        hub.disconnect()


def test_a_revoked_box_cannot_connect(role_broker):
    """A stolen box: the engineer lists it in radsetu_revoked_identities and runs the
    playbook; the CA's revocation list reaches the broker, which refuses that box's
    certificate from then on, and only that one."""
    port, pki, etc, rerun = role_broker
    assert "crlfile" in (etc / "conf.d" / "radsetu.conf").read_text()
    assert not refused(pki, "box-c", port)
    rerun(radsetu_revoked_identities=["box-c"])
    assert refused(pki, "box-c", port)
    assert not refused(pki, "box-a", port) and not refused(pki, "hub", port)


def test_certificates_are_renewed_before_they_expire(tmp_path):
    """A certificate with fewer than ca_renew_days left is issued again by the next run
    of the CA role; one with more is left as it is."""
    inv = inventory(tmp_path, {}, {"ansible_connection": "local",
                                   "ansible_python_interpreter": sys.executable})  # fmt: skip
    crt = tmp_path / "pki" / "box-r.crt"

    def serial() -> str:
        out = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", str(crt)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        return out.stdout

    issue(tmp_path, inv, "box-r", extra=("-e", '{"ca_cert_days": 30}'))
    short = serial()
    issue(tmp_path, inv, "box-r")  # 30 days left, fewer than 60: renewed (for 397)
    renewed = serial()
    assert renewed != short
    issue(tmp_path, inv, "box-r")  # plenty left: kept
    assert serial() == renewed


# -- a throwaway Debian root ----------------------------------------------------------


@pytest.mark.slow
def test_image_stage_roles_and_first_boot_in_a_debian_root(tmp_path, request):
    # the root was being built in the background since the session began (rootfs.py)
    pre = request.config.stash.get(PREBUILD, None)
    if pre is None:  # this test run on its own: build it now
        pre = Prebuild()
        request.addfinalizer(pre.remove)
    code, log = pre.result()
    assert code == 0, log
    root, wheelhouse = pre.root, pre.wheelhouse
    in_root = ["chroot", str(root)]

    # the image holds RadSetu, its units, and no box yet
    assert (root / "opt/radsetu/venv/bin/radsetu").exists()
    assert not (root / "etc/radsetu/edge.toml").exists()
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert {"radsetu-edge.service", "radsetu-firstboot.service"} <= {
        p.name for p in wants.iterdir()
    }
    assert "radsetu-data-unlock.service" in {
        p.name for p in (root / "etc/systemd/system/local-fs.target.wants").iterdir()
    }
    # BBR for the uplink from the first boot: the module loaded, and allowed to the box
    assert (root / "etc/modules-load.d/radsetu.conf").read_text() == "tcp_bbr\n"
    allowed = (root / "etc/sysctl.d/60-radsetu.conf").read_text()
    assert allowed == "net.ipv4.tcp_allowed_congestion_control = reno cubic bbr\n"
    units = [
        root / "etc/systemd/system" / u
        for u in ("radsetu-edge.service", "radsetu-firstboot.service",
                  "radsetu-data-unlock.service")
    ]  # fmt: skip
    v = subprocess.run(
        ["systemd-analyze", f"--root={root}", "verify", *map(str, units)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert v.returncode == 0, v.stderr

    inv = inventory(tmp_path, {}, {})
    issue(tmp_path, inv, "box-img")
    # the image has what the data partition's encryption needs (no TPM in a chroot: the
    # key file; tests/system/test_data_encryption.py seals to a TPM)
    (root / "tmp/card").mkdir()
    shutil.copy(tmp_path / "pki" / "ca.crt", root / "tmp/card/ca.crt")
    with open(root / "tmp/data.img", "wb") as f:
        f.truncate(32 << 20)
    r = subprocess.run([*in_root, "env", "RADSETU_FIRSTBOOT_DIR=/tmp/card",
                        "RADSETU_ETC=/tmp/etc", "/usr/local/sbin/radsetu-data-crypt",
                        "format", "/tmp/data.img"], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (root / "tmp/etc/data.key").exists() and (root / "tmp/card/data-recovery.cms").exists()
    assert subprocess.run([*in_root, "sh", "-c", "command -v clevis-luks-bind"]).returncode == 0

    # the first boot, with what a field engineer puts on the boot partition
    boot = root / "boot/firmware/radsetu"
    boot.mkdir(parents=True)

    def card(env: str, password: str) -> None:
        for src, dst in (("ca.crt", "ca.crt"), ("box-img.crt", "box.crt"),
                         ("box-img.key", "box.key")):  # fmt: skip
            shutil.copy(tmp_path / "pki" / src, boot / dst)
        (boot / "box.env").write_bytes(env.encode())
        (boot / "admin-password").write_bytes(password.encode())

    # box.env is read, never run; a bad card fails before any change, and its secrets
    # leave the boot partition all the same
    card("BOX_ID=box-img\nBROKER_HOST=$(touch /pwned)\n", "first-admin-password\n")
    r = subprocess.run([*in_root, "/usr/local/sbin/radsetu-firstboot"], capture_output=True,
                       text=True)  # fmt: skip
    assert r.returncode == 1 and "not a host name" in r.stdout + r.stderr
    assert not (root / "pwned").exists() and not (root / "etc/radsetu/edge.toml").exists()
    assert not (boot / "box.key").exists() and not (boot / "admin-password").exists()
    # the box makes its own key (it never travels on the card) and leaves a request to
    # sign; the box.env here was edited on Windows (CR LF)
    card('BOX_ID=box-img\r\nCLINIC="Test clinic"\r\nBROKER_HOST=broker.test\r\n'
         "LAN_CIDR=10.9.0.0/24\r\nWEB_NAMES=box-img.clinic.lan, 10.9.0.5\r\n",
         "first-admin-password\r\n")  # fmt: skip
    for name in ("box.key", "box.crt"):
        (boot / name).unlink()
    r = subprocess.run([*in_root, "/usr/local/sbin/radsetu-firstboot"], capture_output=True,
                       text=True)  # fmt: skip
    assert r.returncode == 0 and "box.csr" in r.stdout, r.stdout + r.stderr
    assert (boot / "box.env").exists() and (root / "etc/radsetu/tls/box.key").exists()
    signed = playbook("-i", str(inv), "playbooks/sign-box.yml", "-e", "box_id=box-img",
                      "-e", f"box_csr={boot / 'box.csr'}")  # fmt: skip
    assert recap(signed.stdout)["failed"] == 0
    # the signed certificate serves the clinic's page by the names its PCs use
    san = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName,extendedKeyUsage",
                          "-in", str(tmp_path / "pki" / "box-img.crt")],
                         capture_output=True, text=True).stdout  # fmt: skip
    assert "DNS:box-img, DNS:box-img.clinic.lan, IP Address:10.9.0.5" in san, san
    assert "TLS Web Server Authentication" in san, san
    shutil.copy(tmp_path / "pki" / "box-img.crt", boot / "box.crt")
    (boot / "admin-password").write_bytes(b"first-admin-password\r\n")
    r = subprocess.run(
        [*in_root, "/usr/local/sbin/radsetu-firstboot"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (boot / "box.csr").exists()
    key_pub = subprocess.run(["openssl", "pkey", "-pubout", "-in",
                              str(root / "etc/radsetu/tls/box.key")],
                             capture_output=True, text=True).stdout  # fmt: skip
    crt_pub = subprocess.run(["openssl", "x509", "-noout", "-pubkey", "-in",
                              str(root / "etc/radsetu/tls/box.crt")],
                             capture_output=True, text=True).stdout  # fmt: skip
    assert key_pub and key_pub == crt_pub
    with sqlite3.connect(root / "var/lib/radsetu/index.db") as index:
        (stored, must_change) = index.execute(
            "SELECT password_hash, must_change FROM users WHERE username='clinic-admin'"
        ).fetchone()
    assert check_password(stored, "first-admin-password") and must_change == 1
    assert (root / "etc/hostname").read_text().strip() == "box-img"
    assert not (boot / "box.key").exists() and not (boot / "admin-password").exists()
    toml = (root / "etc/radsetu/edge.toml").read_text()
    assert 'box_id = "box-img"' in toml
    # the page only behind the image's TLS proxy
    assert 'host = "127.0.0.1"' in toml and "behind_tls_proxy = true" in toml
    assert "10.9.0.0/24" in (root / "etc/nftables.conf").read_text()
    # no rule lets a packet in for its source port alone (udp sport 123 reached every port)
    assert "sport" not in (root / "etc/nftables.conf").read_text()

    # the edge service starts in that root and answers C-ECHO
    dicom, web = free_port(), free_port()
    proc = subprocess.Popen(
        [*in_root, "env", f"RADSETU_DICOM_PORT={dicom}", f"RADSETU_WEB_PORT={web}",
         "RADSETU_SYNC_ENABLED=false", "runuser", "-u", "radsetu", "--",
         "/opt/radsetu/venv/bin/radsetu", "edge", "serve", "--config", "/etc/radsetu/edge.toml"],
        stdout=(tmp_path / "edge-in-root.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_port(dicom, proc=proc, timeout=60)
        e = subprocess.run([need("echoscu"), "-aec", "RADSETU", "127.0.0.1", str(dicom)],
                           capture_output=True, text=True)  # fmt: skip
        assert e.returncode == 0, e.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    # the full provisioning (broker, hub, edge roles) on the same root, then again
    inv = inventory(
        tmp_path,
        {"brokers": ["rootfs"], "hubs": ["rootfs"], "boxes": ["rootfs"]},
        {"ansible_host": str(root), "ansible_connection": "community.general.chroot",
         "ansible_become": False, "edge_box_id": "box-img", "edge_clinic": "Test clinic",
         "edge_lan_cidr": "10.9.0.0/24", "radsetu_broker_host": "broker.test",
         "radsetu_broker_port": 8883, "radsetu_wheelhouse": str(wheelhouse),
         "hub_https_port": 8443, "hub_http_port": 0,  # beside the box on one root
         "edge_modalities": [{"ae_title": "CT_ROOM1", "address": "10.9.0.20"},
                             {"ae_title": "CR_ROOM2", "address": "10.9.0.21"}]},
    )  # fmt: skip
    first = playbook("-i", str(inv), "playbooks/site.yml")
    assert recap(first.stdout)["failed"] == 0
    (user,) = [
        x for x in (root / "etc/passwd").read_text().splitlines() if x.startswith("radsetu:")
    ]
    assert user.endswith(":/var/lib/radsetu:/usr/sbin/nologin"), user
    toml = (root / "etc/radsetu/edge.toml").read_text()
    assert 'box_id = "box-img"' in toml and "tls = true" in toml
    # only the clinic's modalities may send, by AE title and by address
    assert 'allowed_callers = ["CT_ROOM1", "CR_ROOM2"]' in toml
    rules = (root / "etc/nftables.conf").read_text()
    # the DICOM port and the worklist's
    assert "ip saddr { 10.9.0.20, 10.9.0.21 } tcp dport { 11112, 11113 } accept" in rules
    assert "[worklist]\nenabled = true\nport = 11113" in toml
    # the clinic's page through nginx only (HTTPS, and HTTP for the redirect)
    assert "ip saddr 10.9.0.0/24 tcp dport { 443, 80, 22 } accept" in rules
    assert 'host = "127.0.0.1"' in toml and "behind_tls_proxy = true" in toml
    hub_toml = (root / "etc/radsetu/hub.toml").read_text()
    assert "behind_tls_proxy = true" in hub_toml
    # the OHIF viewer, from the pinned tarball, where the hub's config says
    assert 'ohif_dir = "/opt/radsetu/ohif/current"' in hub_toml
    index = (root / "opt/radsetu/ohif/current/index.html").read_text()
    assert 'window.PUBLIC_URL="/ohif/"' in index
    sites = {p.name for p in (root / "etc/nginx/conf.d").iterdir()}
    assert sites == {"radsetu-edge.conf", "radsetu-hub.conf"}
    assert not (root / "etc/nginx/sites-enabled/default").exists()
    t = subprocess.run([*in_root, "nginx", "-t"], capture_output=True, text=True)
    assert t.returncode == 0 and "[warn]" not in t.stderr, t.stderr
    assert oct((root / "etc/radsetu/tls/box.key").stat().st_mode & 0o777) == "0o640"
    assert (
        "pattern readwrite radsetu/v1/%u/#"
        in (root / "etc/mosquitto/radsetu/radsetu.acl").read_text()
    )
    assert "require_certificate true" in (root / "etc/mosquitto/conf.d/radsetu.conf").read_text()
    assert "WatchdogSec=30" in (root / "etc/systemd/system/radsetu-edge.service").read_text()
    assert (root / "etc/systemd/system/radsetu-hub.service").exists()
    assert {
        "mosquitto.service",
        "radsetu-edge.service",
        "radsetu-hub.service",
        "nginx.service",
    } <= {p.name for p in wants.iterdir()}
    units = [
        root / "etc/systemd/system" / u for u in ("radsetu-edge.service", "radsetu-hub.service")
    ]
    v = subprocess.run(["systemd-analyze", f"--root={root}", "verify", *map(str, units)],
                       capture_output=True, text=True)  # fmt: skip
    assert v.returncode == 0, v.stderr
    again = playbook("-i", str(inv), "playbooks/site.yml")
    assert recap(again.stdout)["changed"] == 0, again.stdout[-3000:]
