"""Uploads from the clinic's browser: files, a folder or ZIPs, spooled to the data
disk, checked and kept as ``radsetu edge import`` would."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from flask import Request as FlaskRequest
from flask import current_app, jsonify, request, session
from werkzeug.utils import secure_filename

from edge import importer
from edge.errors import BoxError
from edge.pages import _, audit, clinic, render_page


@clinic.get("/upload")
def upload_page() -> Any:
    return render_page("upload.html", "Upload scans")


@clinic.post("/upload")
def upload() -> Any:
    """Files (one by one, a whole folder, or ZIPs) from the browser: each is checked and
    kept as an import would; the answer says what was kept and what was refused."""
    cfg = current_app.config["RADSETU"]
    store = current_app.config["RADSETU_STORE"]
    files = request.files.getlist("files")
    if not files:
        raise BoxError(_("Choose files, a folder or a ZIP first."))
    work = Path(cfg.data_dir) / "uploads" / uuid.uuid4().hex
    work.mkdir(parents=True)
    try:
        names = []
        for i, f in enumerate(files):
            # the browser's name is only a hint: never a path on the box
            name = f"{i:05d}-{secure_filename(f.filename or '') or 'file'}"
            f.save(work / name)
            names.append(f.filename or name)
        imp = cfg["import"]
        summary = importer.run_import(
            store,
            work,
            cfg["store"]["max_instance_bytes"],
            imp["max_total_bytes"],
            imp["max_zip_ratio"],
            progress_out=None,
            source=f"upload:{session['user']}",
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for uid in sorted(summary.studies):
        audit("upload", uid, f"{len(files)} files")
    if not summary.studies:
        audit("upload", "", f"{len(files)} files, nothing kept")
    return jsonify(
        {
            "imported": summary.imported,
            "already_there": summary.already_there,
            "refused": [{"file": n, "reason": r} for n, r in summary.refused],
            "stopped": summary.stopped,
            "studies": sorted(summary.studies),
            "message": _(
                "Imported: %(n)s, already there: %(d)s, refused: %(r)s.",
                n=summary.imported,
                d=summary.already_there,
                r=len(summary.refused),
            ),
        }
    ), (200 if summary.stopped is None else 507)


def upload_request(folder: Path) -> type[FlaskRequest]:
    """Uploaded files spool to the box's data disk (not /tmp, often RAM on a Pi)."""

    class UploadRequest(FlaskRequest):
        def _get_file_stream(  # type: ignore[override]
            self,
            total_content_length: int | None,
            content_type: str | None,
            filename: str | None = None,
            content_length: int | None = None,
        ) -> Any:
            return tempfile.TemporaryFile(dir=folder)

    return UploadRequest
