"""What a C-STORE is answered (shared by both receiver engines), and the receiver on
pynetdicom (``[dicom] engine = "pynetdicom"``; the default is ``edge/receiver.py``):
C-ECHO, and C-STORE for every storage class.

Each handler returns a DICOM status and never lets an exception escape to pynetdicom:
a refused instance gets a failure status with the reason logged, and the receiver
keeps serving.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import tempfile
import time
import weakref
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pydicom.uid import (
    JPEGLossless as JPEGLosslessP14,
)
from pynetdicom import AE, _config, dimse_messages, evt, transport
from pynetdicom.dsutils import create_file_meta
from pynetdicom.sop_class import Verification

from common.dicomfile import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION,
    MAX_META_BYTES,
    STORAGE_SOP_CLASSES,
    InvalidInstance,
    read_meta,
)
from edge.config import Config
from edge.intake import Accepted, accept_dataset, accept_received
from edge.store import Outcome, Store, StoreFull

log = logging.getLogger("radsetu.dicom")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
PRIORITY_HIGH = 0x0001
DUL_LOOP_DELAY = 0.0001

TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,  # first: preferred when a sender offers several
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessP14,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.4.100",  # MPEG2 main profile
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264
]


def handle_echo(event: Any) -> int:
    log.info("C-ECHO from %s", event.assoc.requestor.ae_title)
    return SUCCESS


def is_stat(priority: int, calling: str, config: Config) -> bool:
    """A C-STORE is STAT when sent with priority HIGH or from a STAT calling AE title."""
    return (
        priority == PRIORITY_HIGH
        or calling in config["dicom"]["stat_callers"]
        or calling in config["stat"]["calling_ae_titles"]
    )


def keep_status(accept: Callable[[], Accepted], sop_uid: str, calling: str) -> tuple[int, str]:
    """Run ``accept`` and turn its outcome into a C-STORE status and, for a refusal, the
    reason (logged here; the receiver may also send it back as the error comment)."""
    try:
        accepted = accept()
    except StoreFull as exc:
        log.error("refused %s from %s (0xA700): %s", sop_uid, calling, exc)
        return OUT_OF_RESOURCES, "disk full on the receiving box"
    except InvalidInstance as exc:
        log.warning("refused %s from %s (0xC000): %s", sop_uid, calling, exc.reason)
        return CANNOT_UNDERSTAND, exc.reason
    except OSError as exc:
        if exc.errno in (28, 122):  # ENOSPC, EDQUOT: the disk filled under us
            log.error("refused %s from %s (0xA700): disk full: %s", sop_uid, calling, exc)
            return OUT_OF_RESOURCES, "disk full on the receiving box"
        log.exception("failed to keep %s from %s", sop_uid, calling)
        return PROCESSING_FAILURE, "the box could not write the instance"
    except Exception:  # adapter boundary: the sender gets a failure and may retry
        log.exception("failed to keep %s from %s", sop_uid, calling)
        return PROCESSING_FAILURE, "the box could not keep the instance"
    info = accepted.info
    if accepted.outcome is Outcome.DUPLICATE:
        log.info("study %s: %s from %s already stored", info.study_uid, sop_uid, calling)
    else:
        log.debug(
            "study %s: stored %s from %s (%d bytes, %s)",
            info.study_uid,
            sop_uid,
            calling,
            accepted.size,
            accepted.outcome.value,
        )
    return SUCCESS, ""


def handle_store(event: Any, store: Store, config: Config) -> int:
    """Keep one instance; return 0x0000 only once it is durable."""
    req = event.request
    calling = event.assoc.requestor.ae_title.strip()
    sop_uid = str(req.AffectedSOPInstanceUID)
    stat = is_stat(req.Priority, calling, config)
    path = Path(event.dataset_path)
    max_bytes = config["store"]["max_instance_bytes"]

    def accept() -> Accepted:
        with open(path, "rb") as f:
            received_meta = read_meta(f.read(MAX_META_BYTES))
            size = os.fstat(f.fileno()).st_size - received_meta.end
            f.seek(received_meta.end)
            if received_meta.implementation_class_uid == IMPLEMENTATION_CLASS_UID:
                return accept_received(
                    store,
                    path,
                    received_meta,
                    sop_class_uid=str(req.AffectedSOPClassUID),
                    sop_instance_uid=sop_uid,
                    source=f"dicom:{calling}",
                    max_bytes=max_bytes,
                    stat=stat,
                )
            # pynetdicom wrote a header of its own: copy behind ours
            return accept_dataset(
                store,
                f,
                size,
                sop_class_uid=str(req.AffectedSOPClassUID),
                sop_instance_uid=sop_uid,
                transfer_syntax=str(event.context.transfer_syntax),
                source=f"dicom:{calling}",
                max_bytes=max_bytes,
                stat=stat,
            )

    return keep_status(accept, sop_uid, calling)[0]


def handle_accepted(event: Any) -> None:
    # pynetdicom's reader thread sleeps 1 ms whenever it found nothing to do; with a
    # sender that waits for each response, that idles the link for several ms per
    # instance. 0.1 ms more than doubled throughput on 0.5 MB CT slices (bench/ingest.py)
    # and costs CPU only while an association is open; only once it is accepted, so that
    # connections that never ask for one do not spin.
    dul = getattr(event.assoc, "dul", None)
    if dul is not None and hasattr(dul, "_run_loop_delay"):
        dul._run_loop_delay = DUL_LOOP_DELAY


def handle_rejected(event: Any, config: Config) -> None:
    log.warning(
        "refused association from %s (%s): calling AE title not in dicom.allowed_callers %s",
        event.assoc.requestor.ae_title,
        event.assoc.requestor.address,
        config["dicom"]["allowed_callers"],
    )


def make_ae(config: Config) -> AE:
    d = config["dicom"]
    ae = AE(ae_title=d["ae_title"])
    ae.maximum_pdu_size = d["max_pdu"]
    ae.require_calling_aet = list(d["allowed_callers"])
    ae.add_supported_context(Verification)
    for sop_class in sorted(STORAGE_SOP_CLASSES):
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    # pynetdicom counts connections that never asked for an association too: the cap on
    # connections (admit_by_address) is the one that holds
    ae.maximum_associations = d["max_connections"] + 1
    ae.network_timeout = 120
    ae.acse_timeout = d["setup_seconds"]  # also how long a dead connection keeps its thread
    ae.dimse_timeout = 120
    return ae


RECV_PIECE = 1 << 18
MAX_ASSOCIATE_RQ = 1 << 20
MAX_PDU_UNLIMITED = 64 << 20
_SETUP = {"seconds": 20.0}  # dicom.setup_seconds, set by start()


def _recv_bounded(self: Any, nr_bytes: int) -> bytearray:
    """pynetdicom's ``AssociationSocket.recv`` with the same contract (up to ``nr_bytes``,
    fewer only when the peer closed), but refusing a PDU longer than the box negotiated
    and growing its buffer only as bytes arrive, at most 256 KiB at a time: a header that
    claims 4 GiB costs nothing. Reads into one buffer rather than appending 4 KiB pieces
    one by one: fewer calls and copies per 256 KiB PDU."""
    negotiated = self._assoc.acceptor.maximum_length or 0
    cap = max(negotiated, MAX_ASSOCIATE_RQ) if negotiated else MAX_PDU_UNLIMITED
    if nr_bytes > cap + 6:
        log.warning(
            "aborted the association with %s: a PDU claims %d bytes, more than the %d negotiated",
            self._assoc.requestor.address,
            nr_bytes,
            cap,
        )
        raise OSError(f"a PDU claims {nr_bytes} bytes, more than the {cap} negotiated")
    buf = bytearray(min(nr_bytes, RECV_PIECE))
    got = 0
    original = self.socket.gettimeout()
    seconds = original or 120
    if not self._assoc.is_established:
        seconds = min(seconds, _SETUP["seconds"])
    deadline = time.monotonic() + seconds  # for all nr_bytes, not per recv()
    try:
        while got < nr_bytes:
            if got == len(buf):
                buf.extend(bytes(min(nr_bytes - got, RECV_PIECE)))
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{got} of {nr_bytes} bytes in {seconds:g} s")
            self.socket.settimeout(left)
            with memoryview(buf) as view:
                n = self.socket.recv_into(view[got:], len(buf) - got)
            if not n:
                del buf[got:]
                return buf
            got += n
    finally:
        if self.socket is not None:
            self.socket.settimeout(original)
    return buf


def _close(assoc: Any) -> None:
    """Close the connection of an association that has not been asked for yet, and end
    its thread now. pynetdicom's acceptor waits up to ``acse_timeout`` for the request
    and does not notice a closed connection meanwhile: an empty item on the queue it
    waits on takes the path of that timeout (the thread stops its reader and ends)."""
    try:
        assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)
    except (AttributeError, OSError):
        pass
    if assoc.requestor.primitive is None:  # still waiting for the request
        assoc.dul.to_user_queue.put(None)


_EVICTED_ENDS_WITHIN = 5.0  # seconds; a woken acceptor's thread ends in milliseconds


def admit_by_address(server: Any, config: Config) -> None:
    """Make pynetdicom's server refuse a connection, before it starts a thread for it,
    while ``dicom.max_per_address`` are open from its address, or make room when all
    ``dicom.max_connections`` are taken: the oldest connection that has not asked for an
    association, from the address holding the most, is closed if that address holds at
    least two more than the newcomer's (counted from the server's live associations,
    so nothing can leak)."""
    d = config["dicom"]
    evicted: weakref.WeakSet[Any] = weakref.WeakSet()

    def verify_request(request: Any, client_address: Any) -> bool:
        active = [a for a in server.active_associations if a not in evicted]
        by_address = Counter(a.requestor.address for a in active)
        same = by_address[client_address[0]]
        if same < d["max_per_address"]:
            if len(active) < d["max_connections"]:
                return True
            idle = [a for a in active if not a.is_established]
            if idle:
                top = max({a.requestor.address for a in idle}, key=lambda x: by_address[x])
                if by_address[top] >= same + 2:
                    victim = next(a for a in idle if a.requestor.address == top)
                    evicted.add(victim)
                    _close(victim)
                    # pynetdicom refuses an association while more acceptors than its
                    # own cap are alive, the closed one's too: wait for it to end
                    victim.join(_EVICTED_ENDS_WITHIN)
                    return True
        log.warning(
            "closed a DICOM connection from %s at once: %d open in all, %d from it",
            client_address[0],
            len(active),
            same,
        )
        return False

    def process_request(request: Any, client_address: Any) -> None:
        # in the accepting thread (pynetdicom's handler only makes the association and
        # starts its thread), so that the next verify_request counts this one
        server.finish_request(request, client_address)

    server.verify_request = verify_request
    server.process_request = process_request


def harden(config: Config) -> None:
    """pynetdicom's reader bounded (``_recv_bounded``) with the box's set-up deadline,
    and a listen backlog of 128: for every pynetdicom server of the box."""
    transport.AssociationSocket.recv = _recv_bounded
    _SETUP["seconds"] = config["dicom"]["setup_seconds"]
    transport.ThreadedAssociationServer.request_queue_size = 128  # listen() backlog


def start(config: Config, store: Store) -> Any:
    """Start the receiver in the background; returns pynetdicom's server."""
    # Large instances go straight to a file on the store's disk, not to memory (the box
    # is Pi-class) and not to /tmp (often RAM, and another filesystem).
    _config.STORE_RECV_CHUNKED_DATASET = True
    harden(config)
    tempfile.tempdir = str(store.tmp)
    # ... and with our own file meta header, so that the file pynetdicom writes is the
    # file we keep: adopted in place, not copied (handle_store checks, and copies when
    # a pynetdicom version ignores this).
    dimse_messages.create_file_meta = functools.partial(
        create_file_meta,
        implementation_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version=IMPLEMENTATION_VERSION,
    )
    ae = make_ae(config)
    handlers = [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [store, config]),
        (evt.EVT_REJECTED, handle_rejected, [config]),
        (evt.EVT_ACCEPTED, handle_accepted),
    ]
    d = config["dicom"]
    server = ae.start_server((d["host"], d["port"]), block=False, evt_handlers=handlers)
    admit_by_address(server, config)
    log.info("DICOM receiver %s listening on %s:%s", d["ae_title"], d["host"], d["port"])
    return server
