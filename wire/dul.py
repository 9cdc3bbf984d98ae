"""The DICOM upper layer (PS3.8) and DIMSE command sets (PS3.7), as much as a storage
SCP needs: association request in, accept or reject out, P-DATA PDVs in and out,
release and abort, and C-STORE / C-ECHO command sets. Pure: bytes in, bytes out.

The box's receiver uses this instead of a general-purpose toolkit on its hot path; see
docs/architecture.md ("The receiver's own DICOM upper layer") for why.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = 0x04, 0x05, 0x06, 0x07
PDU_HEADER = 6
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

# presentation context results (PS3.8 9.3.3.2)
ACCEPTANCE = 0
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

# A-ASSOCIATE-RJ (result, source, reason)
REJECT_CALLING_AE = (1, 1, 3)  # permanent, service user, calling AE title not recognised
REJECT_APPLICATION_CONTEXT = (1, 1, 2)  # application context name not supported
REJECT_PROTOCOL_VERSION = (1, 2, 2)  # ACSE, protocol version not supported
REJECT_BUSY = (2, 3, 2)  # transient, presentation layer, local limit exceeded

# A-ABORT source 2 (service provider) reasons
ABORT_UNEXPECTED_PDU = 2
ABORT_INVALID_PARAMETER = 6

# DIMSE command fields and tags
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
NO_DATASET = 0x0101
TAG_AFFECTED_SOP_CLASS = 0x00000002
TAG_COMMAND_FIELD = 0x00000100
TAG_MESSAGE_ID = 0x00000110
TAG_RESPONDING_TO = 0x00000120
TAG_PRIORITY = 0x00000700
TAG_DATASET_TYPE = 0x00000800
TAG_STATUS = 0x00000900
TAG_ERROR_COMMENT = 0x00000902
TAG_AFFECTED_SOP_INSTANCE = 0x00001000


class ProtocolError(ValueError):
    """The peer broke the upper-layer protocol; ``reason`` says how, for the log."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Context:
    id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass
class AssociateRQ:
    called_ae: str
    calling_ae: str
    application_context: str
    contexts: list[Context] = field(default_factory=list)
    max_pdu: int = 0  # what the requestor can receive; 0 = no limit
    implementation_class_uid: str = ""
    implementation_version: str = ""
    protocol_version: int = 1
    raw_called: bytes = b" " * 16
    raw_calling: bytes = b" " * 16


def pdu_header(head: bytes) -> tuple[int, int]:
    """(type, body length) from the 6 bytes that start every PDU."""
    pdu_type, _, length = struct.unpack(">BBL", head)
    return pdu_type, length


def _uid(raw: bytes) -> str:
    return raw.rstrip(b"\x00 ").decode("ascii", "replace")


def _items(body: bytes, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    pos = start
    while pos < end:
        if pos + 4 > end:
            raise ProtocolError("an item header runs past the end of its PDU")
        item_type, _, length = struct.unpack_from(">BBH", body, pos)
        pos += 4
        if pos + length > end:
            raise ProtocolError(f"item 0x{item_type:02x} runs past the end of its PDU")
        yield item_type, body[pos : pos + length]
        pos += length


def parse_associate_rq(body: bytes) -> AssociateRQ:
    if len(body) < 68:
        raise ProtocolError(f"A-ASSOCIATE-RQ of {len(body)} bytes is shorter than its header")
    (version,) = struct.unpack_from(">H", body, 0)
    rq = AssociateRQ(
        called_ae=body[4:20].decode("ascii", "replace").strip(" \x00"),
        calling_ae=body[20:36].decode("ascii", "replace").strip(" \x00"),
        application_context="",
        protocol_version=version,
        raw_called=bytes(body[4:20]),
        raw_calling=bytes(body[20:36]),
    )
    for item_type, item in _items(body, 68, len(body)):
        if item_type == 0x10:
            rq.application_context = _uid(item)
        elif item_type == 0x20:
            if len(item) < 4:
                raise ProtocolError("a presentation context item is too short")
            abstract, transfers = "", []
            for sub_type, sub in _items(item, 4, len(item)):
                if sub_type == 0x30:
                    abstract = _uid(sub)
                elif sub_type == 0x40:
                    transfers.append(_uid(sub))
            rq.contexts.append(Context(item[0], abstract, tuple(transfers)))
        elif item_type == 0x50:
            for sub_type, sub in _items(item, 0, len(item)):
                if sub_type == 0x51 and len(sub) == 4:
                    (rq.max_pdu,) = struct.unpack(">L", sub)
                elif sub_type == 0x52:
                    rq.implementation_class_uid = _uid(sub)
                elif sub_type == 0x55:
                    rq.implementation_version = sub.decode("ascii", "replace").strip()
    ids = [c.id for c in rq.contexts]
    if len(set(ids)) != len(ids):
        raise ProtocolError("two presentation contexts share an id")
    return rq


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def negotiate(rq: AssociateRQ, supported: dict[str, list[str]]) -> list[tuple[int, int, str]]:
    """(context id, result, transfer syntax) for each proposed context. The requestor's
    order of transfer syntaxes wins: the box keeps what it is sent, so it has no reason
    to prefer one encoding over another."""
    out = []
    for ctx in rq.contexts:
        ours = supported.get(ctx.abstract_syntax)
        if ours is None:
            out.append((ctx.id, ABSTRACT_SYNTAX_NOT_SUPPORTED, ""))
            continue
        chosen = next((ts for ts in ctx.transfer_syntaxes if ts in ours), "")
        out.append((ctx.id, ACCEPTANCE if chosen else TRANSFER_SYNTAXES_NOT_SUPPORTED, chosen))
    return out


def associate_ac(
    rq: AssociateRQ,
    results: list[tuple[int, int, str]],
    max_pdu: int,
    implementation_class_uid: str,
    implementation_version: str,
) -> bytes:
    body = struct.pack(">HH", 1, 0) + rq.raw_called + rq.raw_calling + bytes(32)
    body += _item(0x10, APPLICATION_CONTEXT.encode())
    for ctx_id, result, ts in results:
        ts_item = _item(0x40, (ts or "1.2.840.10008.1.2").encode())
        body += _item(0x21, bytes([ctx_id, 0, result, 0]) + ts_item)
    user = _item(0x51, struct.pack(">L", max_pdu))
    user += _item(0x52, implementation_class_uid.encode())
    user += _item(0x55, implementation_version.encode())
    body += _item(0x50, user)
    return _pdu(ASSOCIATE_AC, body)


def associate_rj(result: int, source: int, reason: int) -> bytes:
    return _pdu(ASSOCIATE_RJ, bytes([0, result, source, reason]))


def release_rp() -> bytes:
    return _pdu(RELEASE_RP, bytes(4))


def abort(reason: int = 0, source: int = 2) -> bytes:
    return _pdu(ABORT, bytes([0, 0, source, reason]))


def pdvs(body: memoryview) -> Iterator[tuple[int, bool, bool, memoryview]]:
    """(context id, is command, is last fragment, fragment) for each PDV of a P-DATA."""
    pos, end = 0, len(body)
    while pos < end:
        if pos + 6 > end:
            raise ProtocolError("a PDV header runs past the end of its P-DATA")
        (length,) = struct.unpack_from(">L", body, pos)
        if length < 2 or pos + 4 + length > end:
            raise ProtocolError(f"a PDV of {length} bytes does not fit its P-DATA")
        ctx_id, control = body[pos + 4], body[pos + 5]
        yield ctx_id, bool(control & 1), bool(control & 2), body[pos + 6 : pos + 4 + length]
        pos += 4 + length


PDV_HEADER = 6


def pdv_header(head: bytes, left: int) -> tuple[int, int, bool, bool]:
    """(fragment length, context id, is command, is last) from the 6 bytes that start
    a PDV, ``left`` being what remains of its P-DATA from those 6 bytes on."""
    length, ctx_id, control = struct.unpack(">LBB", head)
    if length < 2 or 4 + length > left:
        raise ProtocolError(f"a PDV of {length} bytes does not fit its P-DATA")
    return length - 2, ctx_id, bool(control & 1), bool(control & 2)


def p_data_command(ctx_id: int, command: bytes) -> bytes:
    """A whole command set as one last command fragment (responses are small)."""
    pdv = struct.pack(">LBB", len(command) + 2, ctx_id, 0x03) + command
    return _pdu(P_DATA, pdv)


def parse_command(data: bytes) -> dict[int, bytes]:
    """A command set (always implicit VR little endian) as tag -> raw value."""
    out: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if pos + 8 > end:
            raise ProtocolError("a command element header runs past the command set")
        group, elem, length = struct.unpack_from("<HHL", data, pos)
        pos += 8
        if group != 0 or pos + length > end:
            raise ProtocolError(f"command element ({group:04x},{elem:04x}) is malformed")
        out[elem] = data[pos : pos + length]
        pos += length
    return out


def command_us(cmd: dict[int, bytes], tag: int, default: int | None = None) -> int:
    raw = cmd.get(tag)
    if raw is None or len(raw) != 2:
        if default is None:
            raise ProtocolError(f"the command set has no (0000,{tag:04x})")
        return default
    (value,) = struct.unpack("<H", raw)
    return int(value)


def command_uid(cmd: dict[int, bytes], tag: int) -> str:
    raw = cmd.get(tag)
    if raw is None:
        raise ProtocolError(f"the command set has no (0000,{tag:04x})")
    return _uid(raw)


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHL", 0, tag, len(value)) + value


def _ui(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def response(
    command_field: int,
    message_id: int,
    sop_class_uid: str,
    status: int,
    sop_instance_uid: str = "",
    comment: str = "",
) -> bytes:
    """A C-STORE-RSP or C-ECHO-RSP command set, group length first."""
    elements = _element(TAG_AFFECTED_SOP_CLASS, _ui(sop_class_uid))
    elements += _element(TAG_COMMAND_FIELD, _us(command_field))
    elements += _element(TAG_RESPONDING_TO, _us(message_id))
    elements += _element(TAG_DATASET_TYPE, _us(NO_DATASET))
    elements += _element(TAG_STATUS, _us(status))
    if comment:  # LO: at most 64 characters, even length, space padded
        text = comment.encode("ascii", "replace")[:64]
        elements += _element(TAG_ERROR_COMMENT, text + b" " * (len(text) % 2))
    if sop_instance_uid:
        elements += _element(TAG_AFFECTED_SOP_INSTANCE, _ui(sop_instance_uid))
    return struct.pack("<HHLL", 0, 0, 4, len(elements)) + elements
