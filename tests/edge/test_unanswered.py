"""The box's record of messages the hub has not answered for (edge/unanswered.py): when
each goes again, and which answer ends it."""

from __future__ import annotations

from edge.unanswered import FIRST_SECONDS, MOST_SECONDS, Unanswered


def test_a_message_goes_again_less_often_until_answered():
    u = Unanswered()
    key = ("up/study", "1.2.3")
    assert u.due(key, "v1", 0.0)
    went = []
    now = 0.0
    while now < 3 * 3600:
        if u.due(key, "v1", now):
            u.sent(key, "v1", now, context="ctx")
            went.append(now)
        now += 1.0
    gaps = [b - a for a, b in zip(went, went[1:], strict=False)]
    assert gaps[:4] == [FIRST_SECONDS, 2 * FIRST_SECONDS, 4 * FIRST_SECONDS, 8 * FIRST_SECONDS]
    assert max(gaps) == MOST_SECONDS and gaps[-1] == MOST_SECONDS
    # an answer for another version ends nothing; the one for what went does
    assert u.answered(key, "v0") is None and len(u) == 1
    sent = u.answered(key, "v1")
    assert sent is not None and sent.context == "ctx" and sent.times == len(went)
    assert len(u) == 0 and u.answered(key, "v1") is None


def test_a_changed_message_goes_at_once_and_a_reconnect_sends_everything():
    u = Unanswered()
    u.sent("a", "v1", 100.0)
    u.sent("b", "x", 100.0)
    assert not u.due("a", "v1", 101.0)
    assert u.due("a", "v2", 101.0)  # changed since: no wait
    u.sent("a", "v2", 101.0)
    assert not u.due("a", "v2", 102.0)
    assert u.answered("a", "v1") is None  # the older answer: v2 still goes on
    assert u.due("a", "v2", 101.0 + FIRST_SECONDS)
    u.clear()  # connected again
    assert u.due("a", "v2", 102.0) and u.due("b", "x", 102.0)
