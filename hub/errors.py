"""The one kind of error the hub's API and pages answer with."""

from __future__ import annotations


class HubError(Exception):
    """Something the caller must fix; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status
