"""Install the OHIF viewer's built application for the hub to serve.

The package is ``@ohif/app`` from the npm registry at one pinned version; its tarball
(``npm pack`` or the registry's URL, fetched by the set-up, never by the hub) is checked
against the pinned SHA-512 before anything is unpacked. Its ``dist/`` is built to be
served at a site's root; the hub serves it under ``/ohif/``, so the absolute paths the
build baked in (webpack's public path, the page's links, the style sheet's fonts) are
rewritten to that prefix. The result goes to a versioned folder, then a ``current``
link is switched to it, so a hub serving the old copy never sees half a new one.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tarfile
from pathlib import Path

VERSION = "3.13.2"
# the registry's "integrity" for @ohif/app@3.13.2 (npm view @ohif/app@3.13.2 dist.integrity)
SHA512 = "WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
TARBALL = f"https://registry.npmjs.org/@ohif/app/-/app-{VERSION}.tgz"
PREFIX = "/ohif/"
PUBLIC_PATH = '__webpack_require__.p = "/";'
MAX_MEMBER_BYTES = 64 * 1024 * 1024  # the largest file in 3.13.2's dist is under 30 MB


class InstallError(Exception):
    """The tarball is not the pinned one, or not a sane archive."""


def sha512_of(path: Path) -> str:
    h = hashlib.sha512()
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            h.update(piece)
    return base64.b64encode(h.digest()).decode()


def _unpack(tarball: Path, into: Path) -> None:
    """Only ``package/dist/`` regular files and folders, inside ``into``."""
    with tarfile.open(tarball, "r:gz") as tar:
        for m in tar.getmembers():
            if not m.name.startswith("package/dist/"):
                continue
            rel = Path(m.name).relative_to("package/dist")
            if rel.is_absolute() or ".." in rel.parts:
                raise InstallError(f"{m.name}: a path outside the viewer's folder")
            if m.isdir():
                (into / rel).mkdir(parents=True, exist_ok=True)
                continue
            if not m.isfile() or m.size > MAX_MEMBER_BYTES:
                raise InstallError(f"{m.name}: not a plain file of a sane size")
            dest = into / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            assert src is not None
            with src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)


def _rebase(folder: Path) -> int:
    """Point the build's absolute paths at ``PREFIX``; returns how many files changed."""
    changed = 0
    for f in folder.iterdir():
        if f.suffix not in {".js", ".css", ".html", ".json"} or not f.is_file():
            continue
        text = f.read_text(encoding="utf-8", errors="surrogateescape")
        new = text.replace(PUBLIC_PATH, PUBLIC_PATH.replace('"/"', f'"{PREFIX}"'))
        if f.suffix == ".css":
            new = new.replace("url(/", f"url({PREFIX}")
        if f.suffix in {".html", ".json"}:
            new = new.replace('="/', f'="{PREFIX}').replace('": "/', f'": "{PREFIX}')
            new = new.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{PREFIX}"')
        if new != text:
            f.write_text(new, encoding="utf-8", errors="surrogateescape")
            changed += 1
    return changed


def install(tarball: Path, dest: Path) -> Path:
    """Check, unpack and rebase ``tarball`` into ``dest/<version>``; ``dest/current``
    then points at it. Returns the folder the hub serves (``dest/current``)."""
    got = sha512_of(tarball)
    if got != SHA512:
        raise InstallError(
            f"{tarball} is not @ohif/app {VERSION}: its SHA-512 is {got}, expected {SHA512}"
        )
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / VERSION
    if not (final / "index.html").is_file():
        work = dest / f".{VERSION}.partial"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        _unpack(tarball, work)
        if not (work / "index.html").is_file() or not _rebase(work):
            raise InstallError(f"{tarball}: no OHIF build in package/dist")
        shutil.rmtree(final, ignore_errors=True)
        work.rename(final)
    return install_link(dest)


def install_link(dest: Path) -> Path:
    """Point ``dest/current`` at this version, in one step."""
    link = dest / "current"
    tmp = dest / ".current.new"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(VERSION)
    os.replace(tmp, link)
    return link
