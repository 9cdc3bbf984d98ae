"""Every command is documented, its help carries an example, and the box stops cleanly."""

import signal
import subprocess
import sys
import time

import radsetu
from devkit.box import Box
from tests.helpers import ROOT

DOCS = ROOT / "docs"


def commands():
    parser = radsetu.build_parser()
    for area, sub in parser._subparsers._group_actions[0].choices.items():
        if sub._subparsers is None:
            yield f"radsetu {area}", sub
            continue
        for name, cmd in sub._subparsers._group_actions[0].choices.items():
            yield f"radsetu {area} {name}", cmd


def test_every_command_has_an_example_and_docs():
    text = "\n".join(p.read_text() for p in DOCS.glob("*.md"))
    found = list(commands())
    assert {n for n, _ in found} >= {
        "radsetu edge serve",
        "radsetu edge import",
        "radsetu pack",
        "radsetu unpack",
    }
    for name, cmd in found:
        assert "example: " + name in cmd.format_help(), f"{name} --help has no example"
        assert name in text, f"{name} is not documented in docs/"


def test_bad_config_is_a_clear_error(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[dicom]\nport = 'eleven'\n")
    r = subprocess.run(
        [sys.executable, "-m", "radsetu", "edge", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "configuration error: dicom.port" in r.stderr


def test_sigterm_stops_the_box(tmp_path):
    box = Box(tmp_path / "b").start()
    box.proc.send_signal(signal.SIGTERM)
    assert box.proc.wait(timeout=20) == 0
    assert "stopped" in box.log_text()


def test_sigterm_while_the_box_starts_stops_it_cleanly(tmp_path):
    """A stop asked for while the box opens its store and ports (systemd stopping it
    just after a start): the box starts what it must, then stops as it would later."""
    box = Box(tmp_path / "b")
    with open(box.log, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "radsetu", "edge", "serve", "--config", str(box.config)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "starting" not in box.log_text():  # looked for often: the signal must come
            assert time.monotonic() < deadline, "the box did not start"  # while it starts
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert "signal 15: stopping" in box.log_text() and "stopped" in box.log_text()


def test_check_and_second_serve_refuse_while_a_box_runs(tmp_path):
    box = Box(tmp_path / "b").start()
    try:
        for cmd in ("check", "serve"):
            r = subprocess.run(
                [sys.executable, "-m", "radsetu", "edge", cmd, "--config", str(box.config)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert r.returncode == 2 and "already running" in r.stderr, r.stderr
    finally:
        box.stop()
    r = subprocess.run(
        [sys.executable, "-m", "radsetu", "edge", "check", "--config", str(box.config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr


def test_user_add_if_absent_leaves_an_account_alone(tmp_path):
    """Provisioning runs `user add --if-absent` on every run: the first makes the
    account, the next ones change nothing; a bad password is refused with exit 2."""
    import subprocess
    import sys

    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    hub_cfg = tmp_path / "hub.toml"
    hub_cfg.write_text(f'data_dir = "{tmp_path / "hub"}"\n')
    for area, role, conf in (("edge", "admin", cfg), ("hub", "operator", hub_cfg)):
        cmd = [sys.executable, "-m", "radsetu", area, "user", "add", "ops-1", "--role", role,
               "--if-absent", "--config", str(conf)]  # fmt: skip
        first = subprocess.run(cmd, input="first password 1\n", capture_output=True, text=True)
        assert first.returncode == 0 and "saved" in first.stdout, first.stderr
        again = subprocess.run(cmd, input="other password 2\n", capture_output=True, text=True)
        assert again.returncode == 0 and "exists" in again.stdout
        short = subprocess.run(
            [*cmd[:-3], "--config", str(conf)], input="short\n", capture_output=True, text=True
        )
        assert short.returncode == 2 and "at least 10 characters" in short.stderr
    from edge import accounts
    from edge.boot import open_store
    from edge.config import load

    store = open_store(load(cfg))
    assert accounts.authenticate(store.db, "ops-1", "first password 1") is not None
    assert accounts.authenticate(store.db, "ops-1", "other password 2") is None
    store.close()
