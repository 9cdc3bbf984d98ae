"""A peer's JSON message: one object, of bounded size, or RemoteProtocolError."""

from __future__ import annotations

import json
from typing import Any

from wire.errors import RemoteProtocolError


def json_object(payload: bytes, what: str, limit: int) -> dict[str, Any]:
    if len(payload) > limit:
        raise RemoteProtocolError(f"{what} of {len(payload)} bytes is too large (at most {limit})")
    try:
        d = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"{what} is not JSON: {exc}") from exc
    if not isinstance(d, dict):
        raise RemoteProtocolError(f"{what} must be a JSON object")
    return d
