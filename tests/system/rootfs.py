"""The throwaway Debian root for the image test, built in the background from the
start of the test session (debootstrap, the image stage's packages and steps: about
two minutes, most of it dpkg), so that the test finds it ready instead of waiting.

``pytest_collection_finish`` in tests/conftest.py starts it when the image test is
among the tests to run; the test takes it with ``Prebuild.result``, or builds in the
foreground when nothing started it (the test run on its own).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository
TEST = "test_image_stage_roles_and_first_boot_in_a_debian_root"
VENV_BIN = Path(sys.executable).parent

#: where conftest keeps the build it started (pytest's stash on the config)
PREBUILD: pytest.StashKey[Prebuild] = pytest.StashKey()


def make_wheelhouse(folder: Path) -> Path:
    """RadSetu's wheel and what it needs, for the box's offline install."""
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(folder), str(ROOT)], check=True,
                   capture_output=True)  # fmt: skip
    (wheel,) = folder.glob("radsetu-*.whl")
    subprocess.run(
        [*pip, "download", "--only-binary=:all:", "-d", str(folder), "-c",
         str(ROOT / "requirements.lock"), str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    return folder


class Prebuild:
    """``firmware-image/build-rootfs.sh`` running in a folder of its own."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="radsetu-rootfs-"))
        self.root = self.folder / "rootfs"
        self.wheelhouse = make_wheelhouse(self.folder / "wheelhouse")
        self.log = self.folder / "build.log"
        env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}:/usr/sbin:/sbin"}
        script = ROOT / "firmware-image/build-rootfs.sh"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(script), str(self.root), str(self.wheelhouse)],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip

    def result(self, timeout: float = 1800) -> tuple[int, str]:
        """Wait for the build: its exit status and the end of its log."""
        code = self.proc.wait(timeout=timeout)
        return code, self.log.read_text(errors="replace")[-6000:]

    def remove(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
