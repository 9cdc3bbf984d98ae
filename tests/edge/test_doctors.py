"""The clinic's referring doctors on the box: what the admin's form accepts, and which
doctor a study's DICOM Referring Physician's Name picks (never a guess)."""

from __future__ import annotations

import pytest

from edge import doctors
from edge.store import Store


@pytest.fixture
def db(tmp_path):
    store = Store(tmp_path / "box")
    yield store.db
    store.close()


def test_the_form_takes_real_numbers_and_refuses_the_rest(db):
    rao = doctors.save(db, {"name": " Dr  Asha   Rao ", "mobile": "098450 12345", "language": "kn"})
    assert (rao.name, rao.mobile, rao.email, rao.language) == (
        "Dr Asha Rao", "+919845012345", "", "kn"
    )  # fmt: skip
    for form, says in (
        ({"name": "<script>x</script>", "mobile": "9845012345"}, "without < or >"),
        ({"name": "", "mobile": "9845012345"}, "the name"),
        ({"name": "A" * 101, "mobile": "9845012345"}, "the name"),
        ({"name": "Dr X", "mobile": "12345"}, "country code"),
        ({"name": "Dr X", "mobile": "+91 98450 12345; DROP TABLE doctors"}, "country code"),
        ({"name": "Dr X", "email": "x@<b>.in"}, "e-mail"),
        ({"name": "Dr X", "email": "x@example.in\nBcc: all@example.in"}, "e-mail"),
        ({"name": "Dr X"}, "reachable"),
        ({"name": "Dr X", "mobile": "9845012345", "language": "fr"}, "language"),
    ):
        with pytest.raises(doctors.DoctorError, match=says):
            doctors.save(db, {"language": "en", **form})
    assert [d.name for d in doctors.listing(db)] == ["Dr Asha Rao"]  # nothing else stored


def test_one_on_call_contact_and_removal_keeps_the_list_honest(db):
    a = doctors.save(db, {"name": "Dr A", "mobile": "9845000001", "on_call": "on"})
    b = doctors.save(db, {"name": "Dr B", "email": "b@example.in", "on_call": "on"})
    assert doctors.on_call(db) == b and not doctors.get(db, a.id).on_call  # type: ignore[union-attr]
    assert doctors.remove(db, b.id) and doctors.on_call(db) is None
    assert not doctors.remove(db, b.id)  # once
    assert [d.name for d in doctors.listing(db)] == ["Dr A"]
    with pytest.raises(doctors.DoctorError, match="no such"):
        doctors.save(db, {"name": "Dr B2", "mobile": "9845000002"}, b.id)


def test_a_dicom_name_picks_one_doctor_or_none(db):
    rao = doctors.save(db, {"name": "Dr. Asha Rao", "mobile": "9845000001"})
    doctors.save(db, {"name": "Ravi Kumar", "mobile": "9845000002"})
    doctors.save(db, {"name": "Dr Ravi Kumar", "mobile": "9845000003"})  # the same name twice
    assert doctors.match(db, "RAO^ASHA^^DR") == rao
    assert doctors.match(db, "rao asha") == rao
    assert doctors.match(db, "KUMAR^RAVI") is None  # two doctors: the page asks
    assert doctors.match(db, "RAO^A") is None  # an initial is not a name
    assert doctors.match(db, "") is None and doctors.match(db, "^^^") is None
    chosen = doctors.save(db, {"name": "Dr Meena", "email": "m@example.in"})
    assert doctors.for_study(db, chosen.id, "RAO^ASHA") == chosen  # the page's choice wins
    assert doctors.for_study(db, None, "RAO^ASHA") == rao
    assert doctors.for_study(db, 99999, "RAO^ASHA") == rao  # a stale choice: the match
