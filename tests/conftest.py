"""Shared fixtures: real boxes in temporary folders, real dcmtk tools."""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.dicomfile import read_meta
from devkit.box import Box, free_port, wait_port
from devkit.broker import Broker, Hub
from tests.helpers import ROOT


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--hub-index",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="the hub's index in these tests: SQLite (default) or a real PostgreSQL, a new "
        "database per test (make test runs the hub's tests on both)",
    )


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    from devkit.postgres import Postgres

    pg = Postgres(tmp_path_factory.mktemp("postgres")).start()
    yield pg
    pg.remove()


_databases = itertools.count()


@pytest.fixture(autouse=True)
def hub_index(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """With ``--hub-index=postgres`` every hub this test makes (in-process stores and
    ``radsetu hub serve`` alike) keeps its index in a new PostgreSQL database."""
    if request.config.getoption("--hub-index") != "postgres":
        yield "sqlite"
        return
    pg = request.getfixturevalue("postgres_server")
    name = f"test{next(_databases)}"
    monkeypatch.setenv("RADSETU_HUB_INDEX_URL", pg.create_database(name))
    yield "postgres"
    from hub.pgindex import close_pools

    close_pools()  # the web's pooled connections of this test's in-process hubs


@pytest.fixture
def another_hub_index(request: pytest.FixtureRequest, hub_index: str):
    """For a test with a second hub: the environment that gives it an index of its own
    (a new PostgreSQL database; nothing with SQLite, whose index is in its folder)."""

    def make() -> dict[str, str]:
        if hub_index != "postgres":
            return {}
        pg = request.getfixturevalue("postgres_server")
        return {"RADSETU_HUB_INDEX_URL": pg.create_database(f"test{next(_databases)}")}

    return make


ACKED = re.compile(r"Sending file: (.+?)\n(?:.*\n)*?.*Received Store Response \(Success\)")


def wait_for(cond, timeout: float, what: str, every: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:  # make test installs dcmtk; running pytest by hand needs it too
        pytest.fail(f"{tool} is not installed (run `make test`, which installs dcmtk)")
    return path


def storescu(
    port: int,
    files: list[Path],
    flags: list[str] | None = None,
    aet: str = "STORESCU",
    check: bool = True,
    **kw,
) -> subprocess.CompletedProcess:
    """Send with dcmtk's storescu -v; stderr holds its per-instance log."""
    cmd = [
        need("storescu"),
        "-v",
        "-aet",
        aet,
        "-aec",
        "RADSETU",
        *(flags or []),
        "127.0.0.1",
        str(port),
        *map(str, files),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"storescu failed ({r.returncode}): {r.stderr[-2000:]}")
    return r


def acked_files(stderr: str) -> list[str]:
    """Files storescu saw acknowledged with Success, in order."""
    acked, current = [], None
    for line in stderr.splitlines():
        if "Sending file: " in line:
            current = line.split("Sending file: ", 1)[1].strip()
        elif "Received Store Response (Success)" in line and current:
            acked.append(current)
            current = None
    return acked


@pytest.fixture
def box(tmp_path: Path):
    b = Box(tmp_path / "box", quiet_seconds=1)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def make_box(tmp_path: Path):
    boxes: list[Box] = []

    def make(name: str = "box", **store) -> Box:
        b = Box(tmp_path / name, **store)
        boxes.append(b)
        return b

    yield make
    for b in boxes:
        b.stop()


@pytest.fixture
def boxes():
    """Boxes a test starts go in this list; each is stopped at the end."""
    made: list[Box] = []
    yield made
    for b in made:
        b.stop()


@pytest.fixture
def small_disk(tmp_path: Path):
    """``small_disk(size_mb)``: a real small filesystem (tmpfs), unmounted afterwards.
    Needs root, as CI has."""
    mounts: list[Path] = []

    def mount(size_mb: int) -> Path:
        mnt = tmp_path / f"small{len(mounts)}"
        mnt.mkdir()
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:  # a person without root is told plainly
            pytest.fail(f"cannot mount a small tmpfs (needs root): {r.stderr}")
        mounts.append(mnt)
        return mnt

    yield mount
    for mnt in mounts:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def wire_copy(tmp_path):
    """dcmtk's bit-preserving receiver: what storescu really put on the wire (it
    re-encodes some files as it sends them)."""
    out = tmp_path / "wire"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [need("storescp"), "+B", "+xa", "-aet", "RADSETU", "-od", str(out), str(port)],
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc=proc)

    def received(uid: str, ts: str) -> bytes:
        for p in out.iterdir():
            data = p.read_bytes()
            meta = read_meta(data[:65536])
            if (meta.sop_instance_uid, meta.transfer_syntax) == (uid, ts):
                return data[meta.end :]
        raise AssertionError(f"storescp did not receive {uid} in {ts}")

    received.port = port  # type: ignore[attr-defined]
    yield received
    proc.terminate()
    proc.wait()


def pdf_text(path: Path, timeout: float = 20) -> str:
    """The text of a PDF that cups-pdf may still be writing (a reprint rewrites the
    same file in place): read again until it is whole."""
    deadline = time.monotonic() + timeout
    while True:
        r = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True)
        if r.returncode == 0 or time.monotonic() > deadline:
            r.check_returncode()
            return r.stdout
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cups_printer():
    """A CUPS queue whose device is cups-pdf; yields (queue, folder its PDFs land in).
    Starts the scheduler when none runs (there is no systemd here). make test runs two
    pytest processes at once, so the queue is this process's own and the scheduler is
    shared: each user holds a shared lock on it, and the one that started it stops it
    only once it alone holds the lock."""
    for tool in ("cupsd", "lpadmin", "lp", "pdftotext"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing (make test installs cups and poppler-utils)")
    lock = open(Path(tempfile.gettempdir()) / "radsetu-test-cupsd.lock", "a")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_SH)
    started = None
    if not _cups_running():
        started = subprocess.Popen(["cupsd", "-f"], stderr=subprocess.DEVNULL)
        wait_for(_cups_running, 20, "cupsd")
    queue = f"radsetu-test-{os.getpid()}"
    subprocess.run(
        [
            "lpadmin",
            "-p",
            queue,
            "-E",
            "-v",
            "cups-pdf:/",
            "-P",
            "/usr/share/ppd/cups-pdf/CUPS-PDF_noopt.ppd",
        ],
        check=True,
        capture_output=True,
    )
    out = Path.home() / "PDF"  # cups-pdf's "Out ${HOME}/PDF" for the user who prints
    try:
        yield queue, out
    finally:
        subprocess.run(["lpadmin", "-x", queue], capture_output=True)
        if started is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # waits for the other process's queue to go
            started.terminate()
            started.wait()
        lock.close()


def _cups_running() -> bool:
    r = subprocess.run(["lpstat", "-r"], capture_output=True, text=True)
    return "is running" in r.stdout and "not running" not in r.stdout


def printed(out: Path, report_id: str, after_ns: int = 0) -> list[Path]:
    """The PDFs cups-pdf has finished writing for this report, written after ``after_ns``
    (a reprint rewrites the first print's file in place): a file counts once pdftotext
    can read it and its size and time stay the same for a moment."""
    done = []
    for p in sorted(out.glob(f"radsetu-report-{report_id}-*.pdf")) if out.exists() else []:
        before = p.stat()
        if before.st_mtime_ns <= after_ns:
            continue
        r = subprocess.run(["pdftotext", str(p), "-"], capture_output=True)
        time.sleep(0.3)
        after = p.stat()
        if r.returncode == 0 and (before.st_size, before.st_mtime_ns) == (
            after.st_size,
            after.st_mtime_ns,
        ):
            done.append(p)
    return done


SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
PHONE, DESKTOP = (390, 844), (1280, 1000)


def chromium(profile: Path, webgl: bool = False):  # type: ignore[no-untyped-def]
    """Headless Chromium through selenium (Debian's chromium and chromium-driver);
    ``webgl``: with WebGL drawn in software (SwiftShader), as OHIF needs."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for tool in ("chromium", "chromedriver"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing (make test installs chromium and chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    gpu = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]
    for arg in ("--headless=new", "--no-sandbox", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
                f"--user-data-dir={profile}",
                *(gpu if webgl else ["--disable-gpu"])):  # fmt: skip
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    driver.implicitly_wait(5)
    return driver


@pytest.fixture
def browser(tmp_path: Path):
    """Headless Chromium for the pages."""
    driver = chromium(tmp_path / "chromium")
    yield driver
    driver.quit()


# Chromium's driver may answer about an element of a page being left with this inspector
# error rather than a stale reference: the element is gone all the same
LEFT_DOCUMENT = "does not belong to the document"


def until(driver, cond, timeout: float = 10):  # type: ignore[no-untyped-def]
    """Wait for ``cond``; an element replaced by the next page in the meantime (a click
    that navigates) is looked for again, not an error."""
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        WebDriverException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    def again(d):  # type: ignore[no-untyped-def]
        try:
            return cond(d)
        except (StaleElementReferenceException, NoSuchElementException):
            return False
        except WebDriverException as exc:
            if LEFT_DOCUMENT not in str(exc):
                raise
            return False

    return WebDriverWait(driver, timeout).until(again)


def gone(driver, element, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    """Wait until ``element`` has left the document (the page navigated)."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def left(_d):  # type: ignore[no-untyped-def]
        try:
            element.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            if LEFT_DOCUMENT not in str(exc):
                raise
            return True
        return False

    WebDriverWait(driver, timeout).until(left)


def screenshots(driver, name: str) -> list[Path]:  # type: ignore[no-untyped-def]
    """The page as it is, at phone (390 px) and desktop width, into test-artifacts/
    (not committed); the window goes back to desktop width."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    out = []
    for label, (w, h) in (("phone", PHONE), ("desktop", DESKTOP)):
        driver.set_window_size(w, h)
        driver.execute_script("window.scrollTo(0, 0)")
        path = SCREENSHOTS / f"{name}-{label}.png"
        driver.save_screenshot(str(path))
        out.append(path)
    return out


# -- a site: a real Mosquitto and a real hub ----------------------------------------


@pytest.fixture
def broker(tmp_path: Path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def hub(tmp_path: Path, broker: Broker):
    h = Hub(tmp_path / "hub", broker.mqtt_config("hub")).start()
    yield h
    h.stop()


def pytest_collection_finish(session: pytest.Session) -> None:
    """The image test's Debian root starts building now, in the background, when that
    test is to run (tests/system/rootfs.py)."""
    from tests.system.rootfs import PREBUILD, TEST, Prebuild

    if session.config.option.collectonly:
        return
    if any(getattr(item, "originalname", "") == TEST for item in session.items):
        session.config.stash[PREBUILD] = Prebuild()


def pytest_unconfigure(config: pytest.Config) -> None:
    from tests.system.rootfs import PREBUILD

    pre = config.stash.get(PREBUILD, None)
    if pre is not None:
        pre.remove()
