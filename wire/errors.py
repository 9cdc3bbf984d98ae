"""Errors of the sync protocol: the peer's fault or ours."""


class ProtocolError(Exception):
    """Base of every protocol error."""


class RemoteProtocolError(ProtocolError):
    """The other side sent something wrong (bad manifest, forged or damaged chunk).
    The message names the transfer and what was expected."""


class LocalProtocolError(ProtocolError):
    """We were asked to do something the protocol does not allow (a bug here)."""


class PreviewMissing(RemoteProtocolError):
    """A record completes a preview this side does not hold (yet): the transfer waits
    for it rather than being asked for again."""
