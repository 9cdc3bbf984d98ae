"""Reports at the hub: a draft, then signed (immutable), then addenda; each signed
version gets its PDF and a delivery to the study's box, retried until acknowledged.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from common.clock import utcnow
from hub import critical, pdf, reading, reportwords
from hub.errors import HubError
from hub.store import FileHubStore, through_broker
from hub.studykeys import real_uid
from wire.report import encode_report

log = logging.getLogger("radsetu.hub.reports")

MAX_TEXT = 20_000


def _text(body: dict[str, Any], key: str, required: bool = False) -> str:
    value = body.get(key, "")
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise HubError(f"{key} must be text of at most {MAX_TEXT} characters")
    if required and not value.strip():
        raise HubError(f"{key} is required")
    return value


def _study_box(store: FileHubStore, study_uid: str) -> str:
    """The one box that sent this study's images (studies are keyed by box and UID,
    hub/studykeys.py): its report goes there and nowhere else."""
    row = store.db.execute(
        "SELECT box_id FROM hub_studies WHERE study_uid=? UNION ALL "
        "SELECT box_id FROM instances WHERE study_uid=? LIMIT 1",
        [study_uid, study_uid],
    ).fetchone()
    if row is None:
        raise HubError(f"study {study_uid} is not at the hub", 404)
    return str(row[0])


def create_draft(store: FileHubStore, study_uid: str, body: dict[str, Any]) -> dict[str, Any]:
    box_id = _study_box(store, study_uid)
    rid = uuid.uuid4().hex[:16]
    store.db.execute(
        """INSERT INTO reports(report_id, version, study_uid, box_id, state, findings,
               impression, radiologist, critical, created_at)
           VALUES (?,1,?,?,'draft',?,?,?,?,?)""",
        [
            rid,
            study_uid,
            box_id,
            _text(body, "findings"),
            _text(body, "impression"),
            _text(body, "radiologist"),
            int(body.get("critical") is True),
            utcnow(),
        ],
    )
    return get(store, rid)


def update_draft(store: FileHubStore, report_id: str, body: dict[str, Any]) -> dict[str, Any]:
    current = get(store, report_id)
    if current["state"] != "draft":
        raise HubError("a signed report cannot change; add an addendum instead", 409)
    fields = {k: _text(body, k) for k in ("findings", "impression", "radiologist") if k in body}
    if "critical" in body:
        fields["critical"] = int(body["critical"] is True)  # type: ignore[assignment]
    if fields:
        sets = ", ".join(f"{k}=?" for k in fields)
        store.db.execute(
            f"UPDATE reports SET {sets} WHERE report_id=? AND version=1 AND state='draft'",
            [*fields.values(), report_id],
        )
    return get(store, report_id)


def sign(
    store: FileHubStore,
    report_id: str,
    radiologist: str | None = None,
    on_preview: bool = False,
) -> dict[str, Any]:
    """Sign a draft. While the study is shown from its lossy preview, only when
    ``on_preview`` (the hub's ``reading.sign_on_preview``), and the report says so."""
    current = get(store, report_id)
    if current["state"] != "draft":
        raise HubError("the report is already signed", 409)
    who = radiologist or current["radiologist"]
    if not who.strip():
        raise HubError("a report is signed by a named radiologist")
    if not (current["findings"].strip() or current["impression"].strip()):
        raise HubError("an empty report cannot be signed")
    preview = reading.preview_of(store, current["study_uid"])
    if preview and not on_preview:
        raise HubError(
            f"the images are a lossy preview ({preview}); the report can be drafted now "
            "and signed once the lossless images are in",
            409,
        )
    signed_at = utcnow()
    with store.db.atomic():  # signed, its PDF and its delivery: all or nothing
        store.db.execute(
            "UPDATE reports SET state='signed', radiologist=?, signed_at=?, on_preview=? "
            "WHERE report_id=? AND version=1",
            [who, signed_at, preview, report_id],
        )
        signed = {"radiologist": who, "signed_at": signed_at, "on_preview": preview}
        _finish(store, {**current, **signed})
        reading.mark(store, current["study_uid"], "signed_at")
    log.info("report %s of study %s signed by %s", report_id, current["study_uid"], who)
    return get(store, report_id)


def add_addendum(store: FileHubStore, report_id: str, body: dict[str, Any]) -> dict[str, Any]:
    first = get(store, report_id, version=1)
    if first["state"] != "signed":
        raise HubError("sign the report before adding an addendum", 409)
    latest = get(store, report_id)
    version = latest["version"] + 1
    row = {
        **first,
        "version": version,
        "findings": _text(body, "findings", required=True),
        "impression": _text(body, "impression"),
        "radiologist": _text(body, "radiologist", required=True),
        "critical": body.get("critical") is True or bool(first["critical"]),
        "signed_at": utcnow(),
    }
    with store.db.atomic():
        store.db.execute(
            """INSERT INTO reports(report_id, version, study_uid, box_id, state, findings,
                   impression, radiologist, critical, created_at, signed_at)
               VALUES (?,?,?,?,'signed',?,?,?,?,?,?)""",
            [
                report_id,
                version,
                first["study_uid"],
                first["box_id"],
                row["findings"],
                row["impression"],
                row["radiologist"],
                int(row["critical"]),
                row["signed_at"],
                row["signed_at"],
            ],
        )
        _finish(store, row)
    return get(store, report_id, version)


def _finish(store: FileHubStore, r: dict[str, Any]) -> None:
    """Make the signed version's PDF (kept beside the objects) and queue its delivery."""
    data = render_pdf(store, r)
    key = f"reports/{r['report_id']}-v{r['version']}.pdf"
    store.blobs.put_bytes(key, data)  # stored before the index names it
    store.db.execute(
        "UPDATE reports SET pdf_path=? WHERE report_id=? AND version=?",
        [key, r["report_id"], r["version"]],
    )
    store.db.execute(
        """INSERT INTO deliveries(report_id, version, box_id, state, created_at)
           VALUES (?,?,?,'pending',?) ON CONFLICT DO NOTHING""",
        [r["report_id"], r["version"], r["box_id"], utcnow()],
    )
    if r.get("critical"):
        critical.open_result(store, r)


def render_pdf(store: FileHubStore, r: dict[str, Any]) -> bytes:
    study = store.db.execute(
        "SELECT patient_name, patient_id, modality, description, acquired_at, "
        "clinical_note, referrer, accession FROM hub_studies WHERE study_uid=?",
        [r["study_uid"]],
    ).fetchone()
    name, pid, modality, description, acquired, question, referrer, accession = study or (("",) * 8)
    doctor = json.loads(referrer).get("name", "") if referrer else ""
    lang = reportwords.language_of(store, r["box_id"])

    def h(english: str) -> str:
        return reportwords.heading(lang, english)

    title = h("Radiology report") + (f" - {h('ADDENDUM')}" if r["version"] > 1 else "")
    blocks: list[tuple[str, str]] = [
        ("title", title),
        ("line", f"{h('Clinic')}: {r['box_id']}"),
        ("line", f"{h('Patient')}: {name or '-'} (ID {pid or '-'})"),
        ("line", f"{h('Study')}: {modality} {description} {acquired or ''}".rstrip()),
        ("line", f"{h('Study UID')}: {real_uid(r['study_uid'])}"),
        ("line", f"{h('Report')}: {r['report_id']} {h('version')} {r['version']}"),
    ]
    for label, value in (
        ("Accession number", accession),
        ("Referred by", doctor),
        ("Clinical question", question),
    ):
        if value:
            blocks.append(("line", f"{h(label)}: {value}"))
    if r.get("on_preview"):
        blocks.append(
            (
                "line",
                f"{h('Read on a lossy preview')}: {r['on_preview']}; "
                "the lossless images had not arrived when this report was signed",
            )
        )
    if r.get("critical"):
        blocks.append(("heading", h("CRITICAL FINDING - act on this report now")))
    blocks += [
        ("heading", h("Findings")),
        ("para", r["findings"] or "-"),
        ("heading", h("Impression")),
        ("para", r["impression"] or "-"),
        ("heading", h("Signed")),
        ("line", f"{r['radiologist']}, {r['signed_at']}"),
    ]
    return pdf.render(blocks, title=f"RadSetu report {r['report_id']}")


def get(store: FileHubStore, report_id: str, version: int | None = None) -> dict[str, Any]:
    q = "SELECT * FROM reports WHERE report_id=?"
    args: list[Any] = [report_id]
    if version is not None:
        q += " AND version=?"
        args.append(version)
    rows = list(store.db.query(q + " ORDER BY version DESC LIMIT 1", args))
    if not rows:
        raise HubError(f"no report {report_id}", 404)
    row = dict(rows[0])
    row["critical"] = bool(row["critical"])
    d = store.db.execute(
        "SELECT state, attempts, acked_at FROM deliveries WHERE report_id=? AND version=?",
        [report_id, row["version"]],
    ).fetchone()
    row["delivery"] = {"state": d[0], "attempts": d[1], "acked_at": d[2]} if d else None
    return row


def for_study(store: FileHubStore, study_uid: str) -> list[dict[str, Any]]:
    return [
        get(store, rid, v)
        for rid, v in store.db.execute(
            "SELECT report_id, version FROM reports WHERE study_uid=? ORDER BY created_at, version",
            [study_uid],
        ).fetchall()
    ]


# -- delivery (run by the MQTT ingest) ---------------------------------------------------


OFFLINE_RETRY_SECONDS = 600.0


def due(
    store: FileHubStore,
    now: float,
    retry_seconds: float,
    broker: str | None = None,
    primary: bool = True,
) -> list[tuple[str, bytes]]:
    """(box id, message) for every delivery not acknowledged and not sent within
    ``retry_seconds`` (a box that is offline: ``OFFLINE_RETRY_SECONDS``, its session
    queue at the broker holds the last copy), for the boxes on ``broker``
    (store.through_broker); marks them sent now."""
    out = []
    on_broker, args = through_broker(broker, primary)
    for rid, version, box_id, seen in store.db.execute(
        f"""SELECT d.report_id, d.version, d.box_id, coalesce(d.last_sent_at, -1) FROM deliveries d
           LEFT JOIN boxes b ON b.box_id = d.box_id
           WHERE d.state='pending' AND (d.last_sent_at IS NULL OR d.last_sent_at <
               CASE WHEN coalesce(b.online, 0) = 1 THEN ? ELSE ? END){on_broker}
           ORDER BY d.created_at""",
        [now - retry_seconds, now - OFFLINE_RETRY_SECONDS, *args],
    ).fetchall():
        # claimed in the statement that marks it sent, if nobody did since we read it
        # (another hub process whose lease ran out while it was paused)
        claimed = store.db.execute(
            "UPDATE deliveries SET attempts=attempts+1, last_sent_at=? "
            "WHERE report_id=? AND version=? AND state='pending' "
            "AND coalesce(last_sent_at, -1) = ?",
            [now, rid, version, seen],
        ).rowcount
        if claimed != 1:
            continue
        r = get(store, rid, version)
        data = store.blobs.get(r["pdf_path"])
        message = {
            k: r[k]
            for k in (
                "report_id",
                "version",
                "study_uid",
                "findings",
                "impression",
                "radiologist",
                "critical",
                "signed_at",
            )
        }
        message["study_uid"] = real_uid(r["study_uid"])  # the UID the box knows
        message["clinic"] = box_id
        out.append((box_id, encode_report(message, data)))
    return out


def box_online(store: FileHubStore, box_id: str) -> None:
    """A box came back: what it has not acknowledged goes at the next round."""
    store.db.execute(
        "UPDATE deliveries SET last_sent_at=NULL WHERE box_id=? AND state='pending'", [box_id]
    )


def acked(
    store: FileHubStore, box_id: str, report_id: str, version: int, printed: bool = False
) -> bool:
    """The box has the report (and, with ``printed``, has printed it). True when this
    ack was news."""
    row = store.db.execute(
        "SELECT study_uid FROM reports WHERE report_id=? AND version=? AND box_id=?",
        [report_id, version, box_id],
    ).fetchone()
    if row is None:
        return False
    cur = store.db.execute(
        "UPDATE deliveries SET state='acked', acked_at=? WHERE report_id=? AND version=? "
        "AND box_id=? AND state='pending'",
        [utcnow(), report_id, version, box_id],
    )
    reading.mark(store, row[0], "report_at_box_at")
    if printed:
        reading.mark(store, row[0], "printed_at")
    return bool(cur.rowcount)
