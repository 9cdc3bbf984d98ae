"""The clock both sides stamp their records with."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_ago(seconds: float) -> str:
    """The time ``seconds`` ago, written as ``utcnow()`` writes (so they compare as text)."""
    then = datetime.now(UTC) - timedelta(seconds=seconds)
    return then.isoformat(timespec="milliseconds").replace("+00:00", "Z")
