"""A critical result at the hub (both index engines), with the clock moved by hand: it
opens at signing with messages to the referring doctor, escalates after
``critical.confirm_minutes`` to the clinic's on-call contact, then to the operators,
a message with no gateway fails with its reason after its tries, and the confirmation
closes it and ends the turnaround."""

from __future__ import annotations

import time

from hub import config as hub_config
from hub import critical, fleet, notify, reading, reports
from hub.store import FileHubStore
from tests.hub.test_referrers import RAO, arrive

ON_CALL = {"name": "Dr On Call", "mobile": "+919900000001", "email": "", "language": "en"}
ALERTS = {"offline_seconds": 600, "backlog_growth_seconds": 1800, "low_disk_bytes": 0,
          "stall_seconds": 900}  # fmt: skip


def kinds(store: FileHubStore) -> set[str]:
    return {a["kind"] for a in fleet.fleet(store, ALERTS)["alerts"]}


def test_open_escalate_fail_and_confirm(tmp_path):
    store = FileHubStore(tmp_path / "hub")
    store.put_box_status("box-1", {"clinic": "Bagalkot", "on_call": ON_CALL}, True)
    arrive(store, "1.2.3", "t1", {"referrer": RAO})
    body = {"findings": "Bleed.", "impression": "Acute bleed.", "radiologist": "Dr B",
            "critical": True}  # fmt: skip
    rid = reports.create_draft(store, "1.2.3", body)["report_id"]
    reports.sign(store, rid, "Dr B")
    sent = store.db.execute("SELECT channel, recipient, role FROM notifications").fetchall()
    assert [tuple(r) for r in sent] == [("sms", RAO["mobile"], "referrer")]

    # before the time: nothing; after it: once, to the on-call contact, and an alert
    assert critical.escalate_due(store, 15) == 0
    store.db.execute("UPDATE critical_results SET opened_at='2020-01-01T00:00:00.000Z'")
    assert "critical_unconfirmed" not in kinds(store)
    assert critical.escalate_due(store, 15) == 1
    assert critical.escalate_due(store, 15) == 0
    roles = [r[0] for r in store.db.execute("SELECT role FROM notifications ORDER BY id")]
    assert roles == ["referrer", "on_call"]
    assert "critical_unconfirmed" not in kinds(store)  # the on-call contact's turn first
    # the on-call contact does not confirm either: the operators, once
    store.db.execute("UPDATE critical_results SET escalated_at='2020-01-01T00:15:00.000Z'")
    assert critical.escalate_due(store, 15) == 1
    assert critical.escalate_due(store, 15) == 0
    assert "critical_unconfirmed" in kinds(store)
    (result,) = critical.of_study(store, "1.2.3")
    assert result["state"] == "open" and result["escalated_at"] and result["operators_at"]

    # no gateway configured: each try fails with the reason, then the message is failed
    cfg = hub_config.load(None, env={})
    now = time.time()
    for i in range(notify.MAX_ATTEMPTS):
        assert notify.send_due(store, cfg, now + i * 10_000) == 0
    states = {r[0] for r in store.db.execute("SELECT state FROM notifications")}
    assert states == {"failed"}
    errors = {r[0] for r in store.db.execute("SELECT last_error FROM notifications")}
    assert errors == {"no SMS gateway configured ([sms] url)"}

    # the on-call contact replies from their phone: closed, the alert goes, turnaround
    code = store.db.execute("SELECT code FROM critical_results").fetchone()[0]
    assert critical.confirm_by_sms(store, "+919900000002", f"YES {code}") is None
    assert critical.confirm_by_sms(store, ON_CALL["mobile"], f"yes, {code}") == rid
    assert "critical_unconfirmed" not in kinds(store)
    tat = reading.turnaround(store, "1.2.3")
    assert tat["times"]["critical_confirmed_at"]
    assert tat["seconds"]["signed_to_critical_confirmed"] is not None
    actions = [r[0] for r in store.db.execute("SELECT action FROM audit ORDER BY id")]
    assert actions.count("critical_escalated") == 1 and "critical_confirmed" in actions
    assert actions.count("critical_to_operators") == 1
    assert actions.count("critical_failed") == 2 * notify.MAX_ATTEMPTS
    store.close()


def test_the_clinics_policy_decides_what_a_message_carries():
    import pytest

    from wire.errors import RemoteProtocolError
    from wire.messages import parse_status

    cfg = hub_config.load(None, env={"RADSETU_HUB_CRITICAL_PUBLIC_URL": "https://hub.example.in"})
    n = {"language": "en", "token": "tok"}
    facts = {"code": "1234", "box_id": "box-1", "patient_name": "RAMAPPA BASAVARAJ",
             "modality": "CT", "description": "Head", "impression": "Acute bleed.",
             "clinic": "Bagalkot"}  # fmt: skip
    hub_default = notify.compose(n, {**facts, "patient_data": ""}, cfg)
    assert "R.B." in hub_default and "Acute bleed" in hub_default and "RAMAPPA" not in hub_default
    named = notify.compose(n, {**facts, "patient_data": "name"}, cfg)
    assert "RAMAPPA BASAVARAJ" in named
    bare = notify.compose(n, {**facts, "patient_data": "none"}, cfg)
    assert "R.B." not in bare and "bleed" not in bare and "CT Head at Bagalkot" in bare
    assert "https://hub.example.in/c/tok" in bare and "YES 1234" in bare
    with pytest.raises(RemoteProtocolError, match="patient_data"):
        parse_status(b'{"patient_data": "everything"}')
