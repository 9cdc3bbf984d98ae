"""The box's data partition at rest (radsetu-data-crypt), on a volume image: LUKS2 with
its key sealed to a TPM 2.0 (a real software TPM, swtpm, over its TCP interface) or,
without one, kept in a root-only file; and a recovery copy that only the fleet CA's key
opens. Opening the volume as a block device needs device-mapper, which these machines
lack: the key the box would open it with is checked against the volume's header
instead (cryptsetup --test-passphrase), which is the same check."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from devkit.box import free_port, wait_port
from tests.conftest import need
from tests.helpers import ROOT
from tests.system.test_provisioning import SECRETS, inventory, issue

SCRIPT = ROOT / "firmware-image/stage-radsetu/00-radsetu/files/radsetu-data-crypt"


@pytest.fixture
def card(tmp_path):
    """A volume image, the card's boot folder with the fleet CA's certificate (from the
    ca role), the box's /etc/radsetu; and a runner for the script with those."""
    inv = inventory(tmp_path, {}, {})
    issue(tmp_path, inv, "box-crypt")
    boot, etc = tmp_path / "boot", tmp_path / "etc"
    boot.mkdir()
    shutil.copy(tmp_path / "pki/ca.crt", boot / "ca.crt")
    image = tmp_path / "data.img"
    with open(image, "wb") as f:
        f.truncate(32 << 20)

    def run(*args: str, tcti: str = "") -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "RADSETU_FIRSTBOOT_DIR": str(boot),
               "RADSETU_ETC": str(etc), "RADSETU_DATA_DEVICE": str(image),
               "RADSETU_TPM_TCTI": tcti}  # fmt: skip
        return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True,
                              timeout=120)  # fmt: skip

    return image, boot, etc, run


def pair_of_ports() -> int:
    while True:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def start_tpm(tmp_path: Path, name: str, procs: list) -> str:  # type: ignore[type-arg]
    state = tmp_path / name
    state.mkdir()
    port = pair_of_ports()
    ctrl = port + 1  # the swtpm TCTI finds the control channel there
    p = subprocess.Popen(
        [need("swtpm"), "socket", "--tpm2", "--tpmstate", f"dir={state}",
         "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
         "--ctrl", f"type=tcp,port={ctrl},bindaddr=127.0.0.1",
         "--flags", "not-need-init,startup-clear"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    procs.append(p)
    wait_port(port, proc=p)
    return f"swtpm:host=127.0.0.1,port={port}"


@pytest.fixture
def tpms(tmp_path):
    procs: list[subprocess.Popen] = []  # type: ignore[type-arg]
    yield lambda name: start_tpm(tmp_path, name, procs)
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


def opens(image: Path, key: bytes) -> bool:
    r = subprocess.run([need("cryptsetup"), "open", "--test-passphrase", "--key-file", "-",
                        str(image)], input=key, capture_output=True)  # fmt: skip
    return r.returncode == 0


def recovered(tmp_path: Path, boot: Path) -> bytes:
    """What the field engineer gets from data-recovery.cms with the fleet CA's key."""
    r = subprocess.run(
        ["openssl", "cms", "-decrypt", "-inform", "PEM", "-in", str(boot / "data-recovery.cms"),
         "-inkey", str(tmp_path / "pki/ca.key"),
         "-passin", f"pass:{SECRETS['radsetu_ca_passphrase']}"],
        capture_output=True, check=True,
    )  # fmt: skip
    return r.stdout


def test_the_key_is_sealed_to_the_boxs_tpm(tmp_path, card, tpms):
    image, boot, etc, run = card
    tpm = tpms("tpm-of-this-box")
    r = run("format", str(image), tcti=tpm)
    assert r.returncode == 0, r.stderr.decode()
    dump = subprocess.run([need("cryptsetup"), "luksDump", str(image)], capture_output=True,
                          text=True).stdout  # fmt: skip
    assert "Version:       \t2" in dump and "clevis" in dump, dump
    assert not (etc / "data.key").exists()  # no key on the box
    key = run("key", tcti=tpm)
    assert key.returncode == 0, key.stderr.decode()
    assert opens(image, key.stdout)
    assert not opens(image, b"a guess")
    # the card in another machine: another TPM unseals nothing
    other = run("key", tcti=tpms("tpm-of-a-thief"))
    assert other.returncode == 1 and b"would not unseal" in other.stderr
    # the field engineer's copy opens it with the CA's key (the board died)
    assert opens(image, recovered(tmp_path, boot))
    # a changed boot chain (PCR 7 measured differently) unseals nothing either
    subprocess.run([need("tpm2_pcrextend"), "7:sha256=" + "01" * 32],
                   env={"TPM2TOOLS_TCTI": tpm}, check=True, capture_output=True)  # fmt: skip
    assert run("key", tcti=tpm).returncode == 1


def test_without_a_tpm_the_key_stays_on_the_box_for_root_only(tmp_path, card):
    image, boot, etc, run = card
    r = run("format", str(image))
    assert r.returncode == 0 and b"no TPM" in r.stderr, r.stderr.decode()
    assert (etc / "data.key").stat().st_mode & 0o777 == 0o400
    key = run("key")
    assert key.stdout == (etc / "data.key").read_bytes() and opens(image, key.stdout)
    assert opens(image, recovered(tmp_path, boot))
    # erasing the box: the key file gone, the data is unreadable without the CA's copy
    (etc / "data.key").unlink()
    assert run("key").returncode == 1


def test_a_bad_card_changes_nothing(card):
    image, boot, etc, run = card
    (boot / "ca.crt").unlink()
    r = run("format", str(image))
    assert r.returncode == 1 and b"ca.crt is missing" in r.stderr
    is_luks = subprocess.run([need("cryptsetup"), "isLuks", str(image)])
    assert is_luks.returncode != 0  # the device was not touched
    r = run("format", str(image.parent / "no-such-device"))
    assert r.returncode == 1 and b"does not exist" in r.stderr
    r = run("key")
    assert r.returncode == 1 and b"no encrypted data partition" in r.stderr
