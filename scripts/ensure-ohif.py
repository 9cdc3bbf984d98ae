"""Set-up: the OHIF viewer's build from the npm registry, at the version and SHA-512
pinned in hub/ohifinstall.py, installed into build/ohif (make test, make demo). The
tarball is kept in build/cache (the hub role's provisioning copies it from there), so a
second run fetches nothing; the hub itself never fetches anything."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hub import ohifinstall  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    dest = ROOT / "build" / "ohif"
    cache = ROOT / "build" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"ohif-app-{ohifinstall.VERSION}.tgz"
    if not tarball.is_file() or ohifinstall.sha512_of(tarball) != ohifinstall.SHA512:
        print(f"ensure-ohif: fetching {ohifinstall.TARBALL}", flush=True)
        part = tarball.with_suffix(".part")
        with urllib.request.urlopen(ohifinstall.TARBALL, timeout=120) as r, open(part, "wb") as f:
            while piece := r.read(1 << 20):
                f.write(piece)
        part.rename(tarball)
    try:
        served = ohifinstall.install(tarball, dest)
    except ohifinstall.InstallError as exc:
        print(f"ensure-ohif: {exc}", file=sys.stderr)
        return 1
    print(f"ensure-ohif: OHIF {ohifinstall.VERSION} in {served}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
