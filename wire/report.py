"""A signed report on its way back to the box: the message and its ack. Pure.

The message is one JSON object: the structured report, and the PDF in base64 with its
SHA-256. The box acknowledges ``(report_id, version)`` once the report is on its disk;
the hub sends again until that ack comes. A version above 1 is an addendum.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Any

from wire.errors import RemoteProtocolError
from wire.jsonobj import json_object

MAX_REPORT_BYTES = 8 * 1024 * 1024
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
TEXT_FIELDS = ("patient_name", "patient_id", "findings", "impression", "radiologist", "clinic")


def encode_report(report: dict[str, Any], pdf: bytes) -> bytes:
    body = {
        **report,
        "pdf_base64": base64.b64encode(pdf).decode("ascii"),
        "pdf_sha256": hashlib.sha256(pdf).hexdigest(),
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def decode_report(payload: bytes) -> tuple[dict[str, Any], bytes]:
    """The report and its PDF; RemoteProtocolError names what is wrong."""
    d = json_object(payload, "report", MAX_REPORT_BYTES)
    rid = d.get("report_id")
    if not isinstance(rid, str) or not _ID.match(rid):
        raise RemoteProtocolError(f"report id {str(rid)[:40]!r} is malformed")
    version = d.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= 1000:
        raise RemoteProtocolError(f"report {rid}: version must be 1 to 1000")
    if not isinstance(d.get("study_uid"), str) or not _UID.match(d["study_uid"]):
        raise RemoteProtocolError(f"report {rid}: study_uid is malformed")
    for key in TEXT_FIELDS:
        if not isinstance(d.get(key, ""), str):
            raise RemoteProtocolError(f"report {rid}: {key} must be text")
    if not isinstance(d.get("critical", False), bool):
        raise RemoteProtocolError(f"report {rid}: critical must be true or false")
    try:
        pdf = base64.b64decode(d.pop("pdf_base64", ""), validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise RemoteProtocolError(f"report {rid}: the PDF is not base64: {exc}") from exc
    if hashlib.sha256(pdf).hexdigest() != d.pop("pdf_sha256", None):
        raise RemoteProtocolError(f"report {rid}: the PDF does not match its SHA-256")
    if not pdf.startswith(b"%PDF-"):
        raise RemoteProtocolError(f"report {rid}: the attachment is not a PDF")
    return d, pdf


def encode_ack(
    report_id: str,
    version: int,
    printed: bool = False,
    confirmed_by: str | None = None,
    readback: str = "",
) -> bytes:
    """The box has kept the report (sent on arrival) and, with ``printed``, printed it
    (sent again after printing, for the turnaround time); with ``confirmed_by``, a member
    of the clinic's staff confirmed that the doctor was told of the critical finding and
    wrote what the doctor read back."""
    d: dict[str, object] = {"report_id": report_id, "version": version, "printed": printed}
    if confirmed_by is not None:
        d.update(confirmed_by=confirmed_by, readback=readback)
    return json.dumps(d).encode()


MAX_READBACK = 500


def decode_confirmation(payload: bytes) -> tuple[str | None, str]:
    """An ack's confirmation of a critical finding (who, and the read-back), if any;
    the ack itself is checked by ``decode_ack``."""
    d = json.loads(payload)
    by, readback = d.get("confirmed_by"), d.get("readback", "")
    if by is None:
        return None, ""
    if not isinstance(by, str) or not 0 < len(by) <= 100:
        raise RemoteProtocolError("report ack: confirmed_by must be a name")
    if not isinstance(readback, str) or len(readback) > MAX_READBACK:
        raise RemoteProtocolError(f"report ack: readback must be text of <= {MAX_READBACK}")
    return by, readback


def decode_ack(payload: bytes) -> tuple[str, int, bool]:
    try:
        d = json.loads(payload)
        rid, version = d["report_id"], d["version"]
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"report ack is malformed: {exc}") from exc
    if (
        not isinstance(rid, str)
        or not _ID.match(rid)
        or not isinstance(version, int)
        or isinstance(version, bool)
        or not 0 < version < 2**31
    ):
        raise RemoteProtocolError("report ack is malformed (report_id, or version out of range)")
    return rid, version, d.get("printed") is True
