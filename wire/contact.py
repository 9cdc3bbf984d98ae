"""A person the hub may have to reach for a clinic: a study's referring doctor, or the
clinic's on-call contact. The box sends it with a study (the manifest's ``referrer``,
a study update) and in its status (``on_call``); ``parse_contact`` checks a peer's:
a name, a mobile number in E.164 form and/or an e-mail address, and the language the
person's messages go in."""

from __future__ import annotations

import re
from typing import Any

from wire.errors import RemoteProtocolError

LANGUAGES = ("en", "hi", "kn")
MAX_NAME = 100
_MOBILE = re.compile(r"^\+[1-9][0-9]{7,14}$")
_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})+$")
FIELDS = ("name", "mobile", "email", "language")


def parse_contact(value: Any, what: str) -> dict[str, str] | None:
    """``value`` checked field by field (None or ``{}``: nobody), or RemoteProtocolError
    naming ``what`` and the field."""
    if value is None or value == {}:
        return None
    if not isinstance(value, dict):
        raise RemoteProtocolError(f"{what}: must be an object")
    out: dict[str, str] = {}
    for key in FIELDS:
        v = value.get(key, "")
        if not isinstance(v, str):
            raise RemoteProtocolError(f"{what}: {key} must be text")
        out[key] = v
    if not 0 < len(out["name"]) <= MAX_NAME or any(c in out["name"] for c in "<>\x00"):
        raise RemoteProtocolError(f"{what}: name must be 1 to {MAX_NAME} characters")
    if out["mobile"] and not _MOBILE.match(out["mobile"]):
        raise RemoteProtocolError(f"{what}: mobile must be a number in E.164 form")
    if out["email"] and not _EMAIL.match(out["email"]):
        raise RemoteProtocolError(f"{what}: email is not an address")
    if not out["mobile"] and not out["email"]:
        raise RemoteProtocolError(f"{what}: neither a mobile number nor an e-mail address")
    if out["language"] not in LANGUAGES:
        raise RemoteProtocolError(f"{what}: language must be one of {', '.join(LANGUAGES)}")
    return out
