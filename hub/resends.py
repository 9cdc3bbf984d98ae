"""Asking a box to send delivered studies again (``radsetu hub resend``): for a hub
rebuilt on an empty disk, or one that lost studies, without a visit to each clinic.

A request is a row of ``resend_requests``. The ``deliver`` job publishes it on the box's
``down/resend`` until the box answers on ``up/resend`` (again after
``RETRY_SECONDS`` while the box is online, after ``reports.OFFLINE_RETRY_SECONDS``
while it is not: its session at the broker keeps the last copy). The box queues each
delivered study it still holds, as ``radsetu edge resend`` does, and answers with what
it queued and why not the rest; the hub keeps the first answer.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from common.clock import utcnow
from hub.access import audit
from hub.reports import OFFLINE_RETRY_SECONDS
from hub.store import FileHubStore, through_broker
from hub.studykeys import real_uid
from wire.errors import RemoteProtocolError
from wire.messages import MAX_RESEND_STUDIES, ResendAnswer, ResendRequest

log = logging.getLogger("radsetu.hub.resends")

RETRY_SECONDS = 60.0


def ask(store: FileHubStore, box_id: str, study_uids: list[str], who: str) -> str:
    """Queue a request to ``box_id`` for ``study_uids`` (empty: every delivered study
    the box holds); its id. ValueError names what is wrong with it."""
    known = store.db.execute("SELECT 1 FROM boxes WHERE box_id=?", [box_id]).fetchone()
    if known is None:
        raise ValueError(f"no box {box_id!r} has been heard from")
    if len(study_uids) > MAX_RESEND_STUDIES:
        raise ValueError(f"at most {MAX_RESEND_STUDIES} studies in one request")
    rid = uuid.uuid4().hex
    uids = [real_uid(u) for u in study_uids]  # a second clinic's key: the box's own UID
    try:  # checked as the box will check it
        ResendRequest.decode(ResendRequest(rid, uids, not uids).encode())
    except RemoteProtocolError as exc:
        raise ValueError(str(exc).replace(f" {rid}", "")) from exc
    store.db.execute(
        "INSERT INTO resend_requests(request_id, box_id, study_uids, every, asked_by, asked_at) "
        "VALUES (?,?,?,?,?,?)",
        [rid, box_id, json.dumps(uids), int(not uids), who, utcnow()],
    )
    what = f"{len(uids)} studies" if uids else "every delivered study"
    audit(store, "resend-asked", "", f"box {box_id}: {what} (request {rid})", user=who)
    return rid


def due(
    store: FileHubStore, now: float, broker: str | None = None, primary: bool = True
) -> list[tuple[str, bytes]]:
    """(box id, message) of each unanswered request not sent within the retry time, for
    the boxes on ``broker``; each claimed as it is marked sent."""
    out = []
    on_broker, args = through_broker(broker, primary)
    for rid, box_id, uids, every, seen in store.db.execute(
        f"""SELECT r.request_id, r.box_id, r.study_uids, r.every, coalesce(r.last_sent_at, -1)
           FROM resend_requests r LEFT JOIN boxes b ON b.box_id = r.box_id
           WHERE r.answered_at IS NULL AND (r.last_sent_at IS NULL OR r.last_sent_at <
               CASE WHEN coalesce(b.online, 0) = 1 THEN ? ELSE ? END){on_broker}
           ORDER BY r.asked_at""",
        [now - RETRY_SECONDS, now - OFFLINE_RETRY_SECONDS, *args],
    ).fetchall():
        claimed = store.db.execute(
            "UPDATE resend_requests SET attempts=attempts+1, last_sent_at=? "
            "WHERE request_id=? AND answered_at IS NULL AND coalesce(last_sent_at, -1) = ?",
            [now, rid, seen],
        ).rowcount
        if claimed == 1:
            out.append((str(box_id), ResendRequest(rid, json.loads(uids), bool(every)).encode()))
    return out


def answered(store: FileHubStore, box_id: str, got: ResendAnswer) -> bool:
    """Keep the box's first answer to its own request; False for any other answer (a
    repeat, or a request this box was never sent)."""
    body = {"queued": got.queued, "studies": got.studies, "unlisted": got.unlisted}
    cur = store.db.execute(
        "UPDATE resend_requests SET answered_at=?, answer=? "
        "WHERE request_id=? AND box_id=? AND answered_at IS NULL",
        [utcnow(), json.dumps(body), got.request_id, box_id],
    )
    if cur.rowcount != 1:
        return False
    refused = [s for s in got.studies if not s["queued"]]
    log.info("box %s queued %d studies to send again (request %s); %d could not be",
             box_id, got.queued, got.request_id, len(refused))  # fmt: skip
    for s in refused:
        log.warning("box %s cannot send study %s again: %s", box_id, s["study_uid"], s["why"])
    return True


def requests(store: FileHubStore, box_id: str = "", request_id: str = "") -> list[dict[str, Any]]:
    """The requests, newest first (one box's, or one), each with its answer decoded."""
    where, args = [], []
    for column, value in (("box_id", box_id), ("request_id", request_id)):
        if value:
            where.append(f"{column}=?")
            args.append(value)
    sql = "SELECT * FROM resend_requests" + (" WHERE " + " AND ".join(where) if where else "")
    rows = [dict(r) for r in store.db.query(sql + " ORDER BY asked_at DESC LIMIT 100", args)]
    for r in rows:
        r["study_uids"] = json.loads(r["study_uids"])
        r["answer"] = json.loads(r["answer"]) if r["answer"] else None
    return rows
