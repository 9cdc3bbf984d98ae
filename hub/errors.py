"""The one kind of error the hub's API and pages answer with."""

from __future__ import annotations

from common.web import ApiError


class HubError(ApiError):
    """Something the caller must fix; ``status`` is the HTTP status to answer with."""
