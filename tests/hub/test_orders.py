"""The clinics' orders at the hub (hub/orders.py): expected, STAT first, until a study
of the same clinic arrives with the order's Study UID or accession number, or the
clinic cancels it; a late message never takes an order back."""

from __future__ import annotations

import dataclasses

from pydicom.uid import generate_uid

from common.clock import iso_ago
from hub import access, orders, users
from hub.store import FileHubStore
from tests.helpers import hub_app, hub_login
from tests.hub.test_dicomindex import arrive, study_of
from wire.codec import pack_bytes
from wire.manifest import Priority
from wire.messages import OrderNotice

PASSWORD = "correct horse battery"


def order(acc: str, **change: str) -> OrderNotice:
    made = OrderNotice(acc, generate_uid(), "scheduled", "routine", "CT", "HEAD",
                       "Headache for a week", "Meena Kumari", "VJP-7", iso_ago(60))  # fmt: skip
    return dataclasses.replace(made, **change)


def listed(store: FileHubStore) -> list[tuple[str, str]]:
    return [(o["box_id"], o["accession"]) for o in orders.expected(store)]


def test_an_order_is_expected_until_its_study_arrives_or_it_is_cancelled(tmp_path):
    from hub.ingest import take_chunk, take_manifest

    store = FileHubStore(tmp_path / "hub")
    first = order("2612030001", ordered_at=iso_ago(600))
    stat = order("2612030002", priority="stat", question="Fall, drowsy")
    by_accession = order("2612030003", ordered_at=iso_ago(300))
    for o in (first, stat, by_accession):
        assert orders.take(store, "box-1", o)
    # the same accession number at another clinic is another order
    assert orders.take(store, "box-2", first)
    stale = order("2611280009", ordered_at=iso_ago(49 * 3600))
    assert orders.take(store, "box-1", stale)
    assert listed(store) == [("box-1", "2612030002"), ("box-1", "2612030001"),
                             ("box-2", "2612030001"), ("box-1", "2612030003")]  # fmt: skip

    # the modality used the worklist: the study has the order's UID
    _, instances = study_of(2)
    arrive(store, first.study_uid, instances)
    assert ("box-1", "2612030001") not in listed(store)
    assert ("box-2", "2612030001") in listed(store)  # that clinic's order still waits

    # the machine kept its own UID: the box met the order by accession number, and the
    # manifest says so
    own_uid, instances = study_of(2)
    tid = generate_uid().replace(".", "")[-32:]
    m, chunks = pack_bytes(instances, chunk_size=1 << 16, transfer_id=tid, box_id="box-1",
                           study_uid=own_uid, priority=Priority.ROUTINE,
                           extra={"order": {"accession": "2612030003",
                                            "ordered_at": by_accession.ordered_at}})  # fmt: skip
    take_manifest(store, m.to_json(), "test")
    for i, c in enumerate(chunks):
        take_chunk(store, tid, i, c, "test")
    assert listed(store) == [("box-1", "2612030002"), ("box-2", "2612030001")]

    # cancelled at the clinic; a late "scheduled" does not bring it back
    assert orders.take(store, "box-1", dataclasses.replace(stat, state="cancelled"))
    assert not orders.take(store, "box-1", stat)
    assert listed(store) == [("box-2", "2612030001")]
    # the modality began it: it is still expected, and says so
    assert orders.take(store, "box-2", dataclasses.replace(first, state="in_progress"))
    assert [o["state"] for o in orders.expected(store)] == ["in_progress"]
    store.close()


def test_the_worklist_shows_what_is_coming_as_text(tmp_path):
    app, store = hub_app(tmp_path)
    users.add(store, "dr-rao", "radiologist", PASSWORD)
    referrer = {"name": "Dr <i>Iyer</i>", "mobile": "+919800000001", "email": "",
                "language": "kn"}  # fmt: skip
    orders.take(store, "box-1", order("2612030005", priority="stat",
                                      patient_name="<script>alert(1)</script>=ಲಕ್ಷ್ಮಿ",
                                      question="<b>drowsy</b>", referrer=referrer))  # fmt: skip
    client = app.test_client()
    hub_login(client, "dr-rao", PASSWORD)
    page = client.get("/").get_data(as_text=True)
    table = page.split('id="expected"', 1)[1].split("</table>", 1)[0]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;=ಲಕ್ಷ್ಮಿ" in table and "<script>" not in table
    assert "&lt;b&gt;drowsy&lt;/b&gt;" in table and "Dr &lt;i&gt;Iyer&lt;/i&gt;" in table
    assert 'class="badge">STAT' in table
    token = access.add_token(store, "dr-rao", "test")
    got = client.get("/api/orders/expected", headers={"Authorization": f"Bearer {token}"})
    (one,) = got.json["orders"]
    assert one["accession"] == "2612030005" and one["referrer"]["name"] == "Dr <i>Iyer</i>"
    assert [a["action"] for a in access.audit_rows(store, action="list_orders")] == ["list_orders"]
    store.close()
