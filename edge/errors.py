"""The one kind of error the box's API and pages answer with."""

from __future__ import annotations

from common.web import ApiError


class BoxError(ApiError):
    """Something the caller must fix; ``status`` is the HTTP status to answer with."""
