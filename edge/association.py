"""One DICOM association on the box's own upper layer: read each PDU with a deadline
and in bounded pieces, negotiate, and turn C-ECHO and C-STORE requests into
responses, writing each dataset fragment straight into the store's temp file.

The listener that admits connections is ``edge/receiver.py``; the protocol is in
``wire/dul.py``; what to keep and which status to answer is ``edge/scp.py``.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from typing import Any, Protocol

from common.dicomfile import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION,
    InvalidInstance,
    Meta,
    build_meta,
    read_meta,
)
from edge.config import Config
from edge.intake import Accepted, accept_written
from edge.scp import SUCCESS, is_stat, keep_status
from edge.store import Store, StoreFull, TempFile
from wire import dul

log = logging.getLogger("radsetu.dicom")

UNRECOGNIZED_OPERATION = 0x0211
MAX_ASSOCIATE_RQ = 1 << 20
MAX_PDU_UNLIMITED = 64 << 20  # with dicom.max_pdu = 0: no PDU this big is honest
MAX_SMALL_PDU = 1024  # a release or an abort: 4 bytes
MAX_COMMAND_BYTES = 64 << 10
MAX_ASSOCIATIONS = 16
NETWORK_TIMEOUT = 120


class Host(Protocol):
    """What an association needs of the listener that admitted it."""

    config: Config
    store: Store
    allowed: set[str]
    supported: dict[str, Any]
    max_pdu: int
    max_bytes: int
    setup_seconds: float

    def take_association(self, sock: socket.socket) -> bool: ...


class PeerClosed(Exception):
    pass


@dataclass
class Incoming:
    """One C-STORE (or other) request whose dataset is still arriving."""

    ctx_id: int
    message_id: int
    command_field: int
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    stat: bool = False
    temp: TempFile | None = None
    meta: Meta | None = None
    error: BaseException | None = None  # why it will be refused, once it has all come
    received: int = 0
    max_bytes: int = 0

    def write(self, fragment: memoryview) -> None:
        self.received += len(fragment)
        if self.temp is None:
            return  # refused already: the rest is read and dropped
        try:
            self.temp.write(fragment)
            if self.temp.size > self.max_bytes:
                raise InvalidInstance(f"more than the {self.max_bytes}-byte limit per instance")
        except (OSError, InvalidInstance) as exc:
            self.refuse(exc)

    def refuse(self, exc: BaseException) -> None:
        self.error = exc
        if self.temp is not None:
            self.temp.discard()
            self.temp = None


class Association:
    def __init__(self, receiver: Host, sock: socket.socket, peer: str):
        self.receiver = receiver
        self.sock = sock
        self.peer = peer
        self.calling = ""
        self.contexts: dict[int, tuple[str, str]] = {}
        self.command = bytearray()
        self.incoming: Incoming | None = None
        self.buf = bytearray(1 << 18)

    # -- reading ------------------------------------------------------------------
    # Every read has a deadline for the whole of what it waits for (a PDU header, a
    # PDV header, a piece of at most 256 KiB), not per recv(): a peer that sends a
    # byte now and then cannot hold a connection. Memory per association is one
    # buffer of 256 KiB whatever length a PDU claims.
    def _read_into(self, view: memoryview, seconds: float) -> None:
        got, need = 0, len(view)
        deadline = time.monotonic() + seconds
        while got < need:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{got} of {need} bytes in {seconds:g} s")
            self.sock.settimeout(left)
            n = self.sock.recv_into(view[got:], need - got)
            if not n:
                raise PeerClosed(f"the peer closed the connection after {got} of {need} bytes")
            got += n

    def _read_header(self, seconds: float) -> tuple[int, int]:
        head = bytearray(dul.PDU_HEADER)
        self._read_into(memoryview(head), seconds)
        return dul.pdu_header(bytes(head))

    def read_pdu(self, limit: int, seconds: float) -> tuple[int, bytes]:
        """A whole small PDU (association request, release, abort)."""
        pdu_type, length = self._read_header(seconds)
        if length > limit:
            raise dul.ProtocolError(
                f"a PDU of type 0x{pdu_type:02x} claims {length} bytes (limit {limit})"
            )
        body = bytearray(length)
        self._read_into(memoryview(body), seconds)
        return pdu_type, bytes(body)

    def read_pdata(self, length: int) -> None:
        """Read a P-DATA body of ``length`` bytes PDV by PDV, each fragment in pieces of
        at most the buffer's size, handing each piece on as it arrives."""
        pos = 0
        head = bytearray(dul.PDV_HEADER)
        while pos < length:
            if length - pos < dul.PDV_HEADER:
                raise dul.ProtocolError("a PDV header runs past the end of its P-DATA")
            self._read_into(memoryview(head), NETWORK_TIMEOUT)
            left, ctx_id, is_command, last = dul.pdv_header(bytes(head), length - pos)
            pos += dul.PDV_HEADER + left
            if not left:
                self.pdv(ctx_id, is_command, last, memoryview(b""))
            while left:
                view = memoryview(self.buf)[: min(left, len(self.buf))]
                self._read_into(view, NETWORK_TIMEOUT)
                left -= len(view)
                self.pdv(ctx_id, is_command, last and not left, view)

    def send(self, pdu: bytes) -> None:
        self.sock.sendall(pdu)

    # -- the association ----------------------------------------------------------
    def run(self) -> None:
        try:
            if self.establish():
                self.serve()
        except dul.ProtocolError as exc:
            log.warning("aborted the association with %s %s: %s", self.calling, self.peer, exc)
            self._try_send(dul.abort(dul.ABORT_UNEXPECTED_PDU))
        except TimeoutError as exc:
            log.warning(
                "aborted the association with %s %s: too slow (%s)", self.calling, self.peer, exc
            )
            self._try_send(dul.abort())
        except PeerClosed as exc:
            if self.incoming is not None:
                log.warning(
                    "%s (%s) went away in the middle of instance %s after %d bytes: "
                    "nothing of it kept, the sender must send it again",
                    self.calling,
                    self.peer,
                    self.incoming.sop_instance_uid,
                    self.incoming.received,
                )
            elif not self.contexts:  # a port probe, or a peer that gave up before asking
                log.debug("connection from %s closed before an association: %s", self.peer, exc)
            else:
                log.warning(
                    "%s (%s) closed the association without a release", self.calling, self.peer
                )
        except OSError as exc:
            log.warning("association with %s %s ended: %s", self.calling, self.peer, exc)
        except Exception:  # adapter boundary: one broken association never stops the box
            log.exception("association with %s %s failed", self.calling, self.peer)
            self._try_send(dul.abort())
        finally:
            if self.incoming is not None:
                self.incoming.refuse(PeerClosed("association ended mid-dataset"))
            self.sock.close()

    def _try_send(self, pdu: bytes) -> None:
        try:
            self.send(pdu)
        except OSError:
            pass

    def establish(self) -> bool:
        r = self.receiver
        pdu_type, body = self.read_pdu(MAX_ASSOCIATE_RQ, r.setup_seconds)
        if pdu_type != dul.ASSOCIATE_RQ:
            raise dul.ProtocolError(f"expected an A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02x}")
        rq = dul.parse_associate_rq(body)
        self.calling = rq.calling_ae
        reject = None
        if not rq.protocol_version & 1:
            reject, why = dul.REJECT_PROTOCOL_VERSION, f"protocol version {rq.protocol_version}"
        elif rq.application_context != dul.APPLICATION_CONTEXT:
            reject, why = (
                dul.REJECT_APPLICATION_CONTEXT,
                f"application context {rq.application_context!r}",
            )
        elif r.allowed and rq.calling_ae not in r.allowed:
            reject = dul.REJECT_CALLING_AE
            why = f"calling AE title not in dicom.allowed_callers {sorted(r.allowed)}"
        elif not r.take_association(self.sock):
            reject, why = dul.REJECT_BUSY, f"more than {MAX_ASSOCIATIONS} associations at once"
        if reject is not None:
            log.warning("refused association from %s (%s): %s", rq.calling_ae, self.peer, why)
            self.send(dul.associate_rj(*reject))
            return False
        results = dul.negotiate(rq, r.supported)
        self.contexts = {
            cid: (ctx.abstract_syntax, ts)
            for (cid, result, ts), ctx in zip(results, rq.contexts, strict=True)
            if result == dul.ACCEPTANCE
        }
        self.send(
            dul.associate_ac(
                rq, results, r.max_pdu, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
            )
        )
        log.debug(
            "association from %s (%s): %d of %d contexts accepted",
            rq.calling_ae,
            self.peer,
            len(self.contexts),
            len(results),
        )
        return True

    def serve(self) -> None:
        limit = self.receiver.max_pdu or MAX_PDU_UNLIMITED
        while True:
            pdu_type, length = self._read_header(NETWORK_TIMEOUT)
            if pdu_type == dul.P_DATA:
                if length > limit:
                    raise dul.ProtocolError(
                        f"a P-DATA PDU claims {length} bytes, more than the {limit} negotiated"
                    )
                self.read_pdata(length)
                continue
            if length > MAX_SMALL_PDU:
                raise dul.ProtocolError(
                    f"a PDU of type 0x{pdu_type:02x} claims {length} bytes (limit {MAX_SMALL_PDU})"
                )
            self._read_into(memoryview(bytearray(length)), NETWORK_TIMEOUT)
            if pdu_type == dul.RELEASE_RQ:
                if self.incoming is not None:
                    raise dul.ProtocolError("release requested in the middle of a dataset")
                self.send(dul.release_rp())
                return
            elif pdu_type == dul.ABORT:
                log.warning("%s (%s) aborted the association", self.calling, self.peer)
                return
            else:
                raise dul.ProtocolError(f"unexpected PDU type 0x{pdu_type:02x}")

    def pdv(self, ctx_id: int, is_command: bool, last: bool, fragment: memoryview) -> None:
        if ctx_id not in self.contexts:
            raise dul.ProtocolError(f"data for presentation context {ctx_id}, not accepted")
        if is_command:
            if self.incoming is not None:
                raise dul.ProtocolError("a new command before the last dataset ended")
            self.command += fragment
            if len(self.command) > MAX_COMMAND_BYTES:
                raise dul.ProtocolError("a command set of more than 64 KiB")
            if last:
                command = dul.parse_command(bytes(self.command))
                self.command.clear()
                self.on_command(ctx_id, command)
            return
        incoming = self.incoming
        if incoming is None or incoming.ctx_id != ctx_id:
            raise dul.ProtocolError("a dataset fragment without its command")
        incoming.write(fragment)
        if last:
            self.incoming = None
            self.on_dataset(incoming)

    def on_command(self, ctx_id: int, command: dict[int, bytes]) -> None:
        field_ = dul.command_us(command, dul.TAG_COMMAND_FIELD)
        message_id = dul.command_us(command, dul.TAG_MESSAGE_ID)
        has_dataset = dul.command_us(command, dul.TAG_DATASET_TYPE) != dul.NO_DATASET
        abstract, ts = self.contexts[ctx_id]
        if field_ == dul.C_ECHO_RQ and not has_dataset:
            log.info("C-ECHO from %s", self.calling)
            self.reply(ctx_id, dul.response(dul.C_ECHO_RSP, message_id, abstract, SUCCESS))
            return
        incoming = Incoming(ctx_id, message_id, field_, max_bytes=self.receiver.max_bytes)
        if field_ != dul.C_STORE_RQ:
            log.warning("refused command 0x%04x from %s: not supported", field_, self.calling)
            incoming.error = dul.ProtocolError("unsupported command")
        else:
            self.start_store(incoming, command, abstract, ts)
        if has_dataset:
            self.incoming = incoming
        else:
            self.on_dataset(incoming)

    def start_store(
        self, incoming: Incoming, command: dict[int, bytes], abstract: str, ts: str
    ) -> None:
        r = self.receiver
        incoming.sop_class_uid = dul.command_uid(command, dul.TAG_AFFECTED_SOP_CLASS)
        incoming.sop_instance_uid = dul.command_uid(command, dul.TAG_AFFECTED_SOP_INSTANCE)
        priority = dul.command_us(command, dul.TAG_PRIORITY, 0)
        incoming.stat = is_stat(priority, self.calling, r.config)
        try:
            if incoming.sop_class_uid != abstract:
                raise InvalidInstance(
                    f"the request's SOP class {incoming.sop_class_uid} is not the one "
                    f"negotiated for its presentation context ({abstract})"
                )
            r.store.ensure_room(0)
            head = build_meta(incoming.sop_class_uid, incoming.sop_instance_uid, ts)
            incoming.meta = read_meta(head)
            incoming.temp = r.store.temp(dataset_offset=incoming.meta.end)
            incoming.temp.write(head)
        except (StoreFull, InvalidInstance, OSError) as exc:
            incoming.refuse(exc)
        except ValueError as exc:  # a UID build_meta cannot write
            incoming.refuse(InvalidInstance(str(exc)))

    def on_dataset(self, incoming: Incoming) -> None:
        abstract, _ = self.contexts[incoming.ctx_id]
        if incoming.command_field != dul.C_STORE_RQ:
            rsp = dul.response(
                incoming.command_field | 0x8000,
                incoming.message_id,
                abstract,
                UNRECOGNIZED_OPERATION,
            )
            self.reply(incoming.ctx_id, rsp)
            return
        if incoming.received == 0 and incoming.error is None:
            incoming.refuse(InvalidInstance("the C-STORE request came without a dataset"))
        r = self.receiver

        def accept() -> Accepted:
            if incoming.error is not None:
                raise incoming.error
            assert incoming.temp is not None and incoming.meta is not None
            return accept_written(
                r.store,
                incoming.temp,
                incoming.meta,
                sop_class_uid=incoming.sop_class_uid,
                sop_instance_uid=incoming.sop_instance_uid,
                source=f"dicom:{self.calling}",
                max_bytes=incoming.max_bytes,
                stat=incoming.stat,
            )

        status, comment = keep_status(accept, incoming.sop_instance_uid, self.calling)
        rsp = dul.response(
            dul.C_STORE_RSP,
            incoming.message_id,
            incoming.sop_class_uid,
            status,
            incoming.sop_instance_uid,
            comment,
        )
        self.reply(incoming.ctx_id, rsp)

    def reply(self, ctx_id: int, command: bytes) -> None:
        """Send a response command set (no dataset follows any response here)."""
        self.send(dul.p_data_command(ctx_id, command))
