"""The OHIF viewer, served by the hub under ``/ohif/`` behind the hub's own login.

The built application is installed by ``radsetu hub install-viewer`` (hub/ohifinstall.py)
into ``viewer.ohif_dir``. Its configuration is the hub's, made here: one data source,
the hub's own DICOMweb on the page's own origin, so every request OHIF makes carries
the radiologist's session cookie (no second login, no token in a URL) and passes the
same access rules and audit as the worklist. Any other path under ``/ohif/`` is one of
OHIF's own routes and gets its page.

A page opened on studies (``?StudyInstanceUIDs=``) is given the DICOMweb root of the
first study's clinic (``/dicomweb/clinics/<box>``): OHIF lists the patient's other
studies by Patient ID, and a Patient ID is only unique within one clinic.
"""

from __future__ import annotations

import json
import re
from functools import cache
from html import escape as html_escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    redirect,
    request,
    send_from_directory,
    session,
    url_for,
)

from common.passwords import csrf_token
from common.web import csp_nonce
from hub import dicomindex, reading
from hub.db import request_store

ohif = Blueprint("ohif", __name__, url_prefix="/ohif")

# OHIF needs WebAssembly (its image decoders), workers from blob: URLs and inline
# styles; nothing from another origin, and never in a frame
CSP = (
    "default-src 'self'; script-src 'self' 'nonce-{nonce}' 'wasm-unsafe-eval'; "
    "worker-src 'self' blob:; connect-src 'self' blob: data:; img-src 'self' data: blob:; "
    "style-src 'self' 'unsafe-inline'; font-src 'self' data:; object-src 'none'; "
    "base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)

# What OHIF writes back (its measurements as a structured report, hub/stow.py) carries
# the session's CSRF token, as the hub's own forms do: a write that changes something
# on this origin, made with XMLHttpRequest (dicomweb-client's way), gets the header.
CSRF_HOOK = """function (token) {
  const open = XMLHttpRequest.prototype.open, send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.open = function (method, url) {
    this.radsetuWrite = !/^(GET|HEAD|OPTIONS)$/i.test(method) &&
      new URL(url, window.location.href).origin === window.location.origin;
    return open.apply(this, arguments);
  };
  XMLHttpRequest.prototype.send = function () {
    if (this.radsetuWrite) this.setRequestHeader('X-CSRF-Token', token);
    return send.apply(this, arguments);
  };
}"""

APP_CONFIG = """const radsetuRoot =
  window.location.origin + (window.radsetuDicomweb || '/dicomweb');
window.config = {
  routerBasename: '/ohif',
  extensions: [],
  modes: [],
  // no guided tour over a radiologist's first study
  customizationService: { 'ohif.tours': { $set: [] } },
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'radsetu',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'radsetu',
      configuration: {
        friendlyName: 'RadSetu hub',
        name: 'radsetu',
        wadoUriRoot: radsetuRoot,
        qidoRoot: radsetuRoot,
        wadoRoot: radsetuRoot,
        qidoSupportsIncludeField: true,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video,pdf',
        bulkDataURI: { enabled: true },
        omitQuotationForMultipartRequest: true,
        dicomUploadEnabled: false,
      },
    },
  ],
};
"""


def folder() -> Path | None:
    """The installed build, or None when this hub has none."""
    cfg = current_app.config["RADSETU"]
    raw = str(cfg["viewer"]["ohif_dir"])
    if not raw:
        return None
    path = Path(raw)
    return path if (path / "index.html").is_file() else None


def available() -> bool:
    return folder() is not None


@cache
def _index(path: Path, mtime: float) -> str:
    return path.read_text(encoding="utf-8")


def _row(uid: str) -> dict[str, Any] | None:
    """A study's row (its headers are read only when OHIF asks for them)."""
    rows = dicomindex.visible_rows(request_store(), key=uid)
    found = rows[0] if rows else None
    if found is None and uid.startswith("2.25."):  # a second clinic's study
        twin = dicomindex.study(request_store(), uid)
        found = twin.row if twin else None
    return found


def _opened() -> list[dict[str, Any]]:
    """The rows of the studies the page opens, the first first."""
    uids = [u.strip() for u in request.args.get("StudyInstanceUIDs", "").split(",")]
    return [row for uid in uids[:8] if uid and (row := _row(uid)) is not None]


def _root(first: dict[str, Any] | None) -> str:
    """The DICOMweb root for this page: the clinic of the first study it opens."""
    return f"/dicomweb/clinics/{quote(first['box_id'], safe='')}" if first else "/dicomweb"


def _banner(rows: list[dict[str, Any]]) -> str:
    """A banner over the viewer while any study it opens is shown from its preview."""
    lossy = [p for row in rows if (p := reading.preview_of(request_store(), row["study_uid"]))]
    if not lossy:
        return ""
    text = html_escape(
        f"LOSSY PREVIEW ({lossy[0]}): the lossless images are on their way; "
        "reload this page once they are in"
    )
    return (
        '<div id="radsetu-lossy-preview" role="alert" style="position:fixed;top:0;left:50%;'
        "transform:translateX(-50%);z-index:100000;background:#b00020;color:#fff;"
        f'padding:4px 14px;font:bold 14px sans-serif;border-radius:0 0 6px 6px">{text}</div>'
    )


def _page(dist: Path) -> Response:
    """OHIF's index.html with the answer's nonce on its scripts, and its DICOMweb root."""
    index = dist / "index.html"
    html = _index(index, index.stat().st_mtime)
    nonce = csp_nonce()
    html = re.sub(r"<script(?=[\s>])", f'<script nonce="{nonce}"', html)
    opened = _opened()
    root = json.dumps(_root(opened[0] if opened else None)).replace("<", "\\u003c")
    token = json.dumps(csrf_token(session)).replace("<", "\\u003c")
    html = html.replace(
        "<head>",
        f'<head><script nonce="{nonce}">window.radsetuDicomweb = {root};'
        f"({CSRF_HOOK})({token});</script>",
        1,
    )
    html = re.sub(r"(<body[^>]*>)", lambda m: m[1] + _banner(opened), html, count=1)
    r = Response(html, mimetype="text/html")
    r.headers["Cache-Control"] = "no-store"
    return _secured(r)


def _secured(r: Response) -> Response:
    r.headers["Content-Security-Policy"] = CSP.format(nonce=csp_nonce())
    return r


def _dist() -> Path:
    dist = folder()
    if dist is None:
        abort(404, "OHIF is not installed on this hub (viewer.ohif_dir)")
    return dist


@ohif.get("/app-config.js")
def app_config() -> Any:
    _dist()
    r = Response(APP_CONFIG, mimetype="text/javascript")
    r.headers["Cache-Control"] = "no-store"
    return _secured(r)


@ohif.get("/", defaults={"path": ""})
@ohif.get("/<path:path>")
def page(path: str) -> Any:
    """OHIF's page, for any of its own routes (``/ohif/viewer?StudyInstanceUIDs=...``)."""
    return _page(_dist())


@ohif.get("/<path:path>.<ext>")
def asset(path: str, ext: str) -> Any:
    """A file of the build: the open-source application itself, no patient data, so it
    needs no login (a browser fetches some, such as the manifest, without cookies)."""
    dist = _dist()
    name = f"{path}.{ext}"
    target = (dist / name).resolve()
    if not target.is_relative_to(dist.resolve()) or not target.is_file():
        abort(404)
    if name == "index.html":  # OHIF's page, made for a study: behind the login as the
        # page is (it names the study's clinic and whether it is shown from a preview)
        query = request.query_string.decode("ascii", "replace")
        return redirect(url_for("ohif.page") + (f"?{query}" if query else ""))
    return _secured(send_from_directory(dist, name, max_age=3600))
