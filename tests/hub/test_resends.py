"""The hub asking a box to send delivered studies again (hub/resends.py): queued for a
known box only, sent until answered (claimed once across processes), the box's own
first answer kept, anything else refused."""

from __future__ import annotations

import pytest

from hub import resends
from hub.store import FileHubStore
from wire.messages import ResendAnswer, ResendRequest


def test_a_request_goes_until_its_own_box_answers_it(tmp_path):
    store = FileHubStore(tmp_path / "hub")
    with pytest.raises(ValueError, match="no box 'box-1' has been heard from"):
        resends.ask(store, "box-1", [], "ops")
    store.put_box_status("box-1", {"clinic": "Bagalkot"}, True)
    store.put_box_status("box-2", {"clinic": "Hubballi"}, True)
    with pytest.raises(ValueError, match="not a UID"):
        resends.ask(store, "box-1", ["1.2.3", "<script>"], "ops")
    with pytest.raises(ValueError, match="at most 1000 studies"):
        resends.ask(store, "box-1", ["1.2.3"] * 1001, "ops")
    named = resends.ask(store, "box-1", ["1.2.3", "1.2.4~box-1"], "ops")
    every = resends.ask(store, "box-2", [], "ops")

    sent = resends.due(store, now=1000.0)
    assert sorted(box for box, _ in sent) == ["box-1", "box-2"]
    asked = {box: ResendRequest.decode(body) for box, body in sent}
    assert asked["box-1"] == ResendRequest(named, ["1.2.3", "1.2.4"], False)  # the box's UIDs
    assert asked["box-2"] == ResendRequest(every, [], True)
    assert resends.due(store, now=1030.0) == []  # not again within the retry time
    assert len(resends.due(store, now=1061.0)) == 2  # unanswered: again

    # another box's answer to it, and an answer to no request, change nothing
    rows = [
        {"study_uid": "1.2.4", "queued": False, "why": "gone"},
        {"study_uid": "1.2.3", "queued": True, "why": "queued"},
    ]
    answer = ResendAnswer(named, 1, rows)
    assert not resends.answered(store, "box-2", answer)
    assert not resends.answered(store, "box-1", ResendAnswer("f" * 32, 0, []))
    assert resends.answered(store, "box-1", answer)
    assert not resends.answered(store, "box-1", ResendAnswer(named, 0, []))  # the first stays
    (row,) = resends.requests(store, box_id="box-1")
    assert row["answer"] == {"queued": 1, "studies": answer.studies, "unlisted": 0}
    assert row["attempts"] == 2 and row["answered_at"]
    assert [box for box, _ in resends.due(store, now=5000.0)] == ["box-2"]  # answered: done
    audit = store.db.execute("SELECT detail FROM audit WHERE action='resend-asked'").fetchall()
    assert len(audit) == 2 and "every delivered study" in audit[1][0]
    store.close()


def test_a_request_is_claimed_once_by_hub_processes_that_race_for_it(tmp_path):
    store = FileHubStore(tmp_path / "hub")
    store.put_box_status("box-1", {}, True)
    resends.ask(store, "box-1", [], "ops")
    other = FileHubStore(tmp_path / "hub")  # another process of the cluster on the same index
    first = resends.due(store, now=1000.0)
    assert len(first) == 1 and resends.due(other, now=1000.0) == []
    (row,) = resends.requests(other)
    assert row["attempts"] == 1 and row["study_uids"] == [] and row["every"] == 1
    other.close()
    store.close()
