"""A contact from a box (a referring doctor, the on-call contact), checked field by field."""

from __future__ import annotations

import pytest

from wire.contact import parse_contact
from wire.errors import RemoteProtocolError

GOOD = {"name": "ಡಾ. ಆಶಾ ರಾವ್", "mobile": "+919845012345", "email": "", "language": "kn"}


def test_a_good_contact_and_nobody():
    assert parse_contact(GOOD, "referrer") == GOOD
    assert parse_contact({**GOOD, "extra": 1}, "referrer") == GOOD  # unknown keys dropped
    assert parse_contact(None, "referrer") is None and parse_contact({}, "referrer") is None


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"name": ""}, "name"),
        ({"name": "<img src=x onerror=alert(1)>"}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": 7}, "name must be text"),
        ({"mobile": "9845012345"}, "mobile"),
        ({"mobile": "+91 98450 12345"}, "mobile"),
        ({"mobile": "+9198450123451234567"}, "mobile"),
        ({"email": "a@b"}, "email"),
        ({"email": "a@example.in\r\nBcc: x@example.in"}, "email"),
        ({"mobile": "", "email": ""}, "neither"),
        ({"language": "de"}, "language"),
        ({"language": None}, "language must be text"),
    ],
)
def test_bad_fields_are_named(change, says):
    with pytest.raises(RemoteProtocolError, match=says):
        parse_contact({**GOOD, **change}, "referrer")


def test_not_an_object():
    for value in ([GOOD], "Dr Rao", 3):
        with pytest.raises(RemoteProtocolError, match="referrer: must be an object"):
            parse_contact(value, "referrer")
