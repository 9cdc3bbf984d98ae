"""Sending delivered studies again (``radsetu edge resend``): for a hub rebuilt on an
empty disk, or one that lost a study. A delivered study still on the box goes back to
``ready``, every instance unsent, and the packer sends it as a new transfer; it is
delivered again (and its retention starts again) once the hub verifies it. A hub that
still holds it keeps instances by (SOP Instance UID, SHA-256): nothing changes there.

A study not yet delivered is on its way already; a purged one has no files left to send.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from edge import studies
from edge.accounts import audit
from edge.outbox import forget_carried
from wire.messages import MAX_RESEND_STUDIES, MAX_WHY, ResendAnswer

log = logging.getLogger("radsetu.outbox")


@dataclass(frozen=True)
class Outcome:
    study_uid: str
    queued: bool
    why: str  # for the person who asked
    instances: int = 0
    size: int = 0


def delivered(db: Any) -> list[str]:
    """Every delivered study on the box, oldest delivery first."""
    rows = db.execute("SELECT study_uid FROM studies WHERE state='delivered' ORDER BY delivered_at")
    return [str(r[0]) for r in rows.fetchall()]


def resend(db: Any, study_uid: str, who: str = "") -> Outcome:
    """Queue one delivered study to be sent whole again (one transaction)."""
    with db.atomic():
        row = db.execute(
            "SELECT state, delivered_at FROM studies WHERE study_uid=?", [study_uid]
        ).fetchone()
        if row is None:
            return Outcome(study_uid, False, "not on this box")
        if row[0] == "purged":
            purged = db.execute(
                "SELECT at, reason FROM purges WHERE study_uid=? ORDER BY at DESC LIMIT 1",
                [study_uid],
            ).fetchone()
            when = f" on {purged[0]} ({purged[1]})" if purged else ""
            return Outcome(study_uid, False, f"deleted from the box{when}: nothing to send")
        if row[0] != "delivered":
            return Outcome(study_uid, False, f"not delivered yet ({row[0]}): it is on its way")
        count, size = db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM instances WHERE study_uid=?",
            [study_uid],
        ).fetchone()
        forget_carried(db, study_uid)
        studies.send_again(db, study_uid)
        detail = f"{count} instances, {size} bytes; delivered {row[1]}"
        audit(db, who or "system", "resend", study_uid, detail)
    log.info("study %s queued to be sent again (%s)", study_uid, detail)
    return Outcome(study_uid, True, f"queued: {detail}", int(count), int(size))


def answer(request_id: str, outcomes: list[Outcome]) -> ResendAnswer:
    """The hub's answer: the studies not queued first (each is something to look into),
    then those queued, as many as one answer lists."""
    ordered = sorted(outcomes, key=lambda o: o.queued)
    listed = [
        {"study_uid": o.study_uid, "queued": o.queued, "why": o.why[:MAX_WHY]}
        for o in ordered[:MAX_RESEND_STUDIES]
    ]
    queued = sum(o.queued for o in outcomes)
    return ResendAnswer(request_id, queued, listed, len(outcomes) - len(listed))
