"""The box's DICOM receiver on its own upper layer (``[dicom] engine = "native"``).

The listener admits a connection only while fewer than ``dicom.max_connections`` are
open in all and fewer than ``dicom.max_per_address`` from its address, before any
thread exists for it; each admitted connection gets one thread that runs its
association (``edge/association.py``). docs/architecture.md says why this exists.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter

from common.dicomfile import STORAGE_SOP_CLASSES
from edge.association import MAX_ASSOCIATIONS, Association
from edge.config import Config
from edge.scp import TRANSFER_SYNTAXES
from edge.store import Store

log = logging.getLogger("radsetu.dicom")

VERIFICATION = "1.2.840.10008.1.1"
REFUSAL_LOG_SECONDS = 10


class Receiver:
    """Listens for associations; ``shutdown()`` stops it (the pynetdicom server's name)."""

    def __init__(self, config: Config, store: Store):
        d = config["dicom"]
        self.config = config
        self.store = store
        self.allowed = set(d["allowed_callers"])
        self.max_pdu = d["max_pdu"]
        self.max_bytes = config["store"]["max_instance_bytes"]
        syntaxes = [str(ts) for ts in TRANSFER_SYNTAXES]
        self.supported = {uid: syntaxes for uid in STORAGE_SOP_CLASSES}
        self.supported[VERIFICATION] = syntaxes
        self.max_connections = d["max_connections"]
        self.max_per_address = d["max_per_address"]
        self.setup_seconds = d["setup_seconds"]
        self._lock = threading.Lock()
        self._sockets: dict[socket.socket, tuple[str, float]] = {}  # -> (address, since)
        self._associated: set[socket.socket] = set()
        self._evicted: set[socket.socket] = set()
        self._per_address: Counter[str] = Counter()
        self._associations = 0
        self._refused = 0
        self._refusal_logged = 0.0
        self._stopping = threading.Event()
        self.listener = socket.create_server((d["host"], d["port"]), backlog=128)
        self.thread = threading.Thread(target=self._accept, name="dicom-accept", daemon=True)

    def take_association(self, sock: socket.socket) -> bool:
        """One more association, if fewer than MAX_ASSOCIATIONS are established
        (connections that never asked for one do not count)."""
        with self._lock:
            if self._associations >= MAX_ASSOCIATIONS:
                return False
            self._associations += 1
            self._associated.add(sock)
            return True

    def _victim(self, address: str) -> socket.socket | None:
        """With every place taken: the oldest connection that has not asked for an
        association, from the address holding the most, if that address holds at least
        two more than ``address`` (a newcomer always gets a fair share)."""
        idle = [(s, a, t) for s, (a, t) in self._sockets.items() if s not in self._associated]
        if not idle:
            return None
        top = max({a for _s, a, _t in idle}, key=lambda a: self._per_address[a])
        if self._per_address[top] < self._per_address[address] + 2:
            return None
        return min((x for x in idle if x[1] == top), key=lambda x: x[2])[0]

    def _release(self, sock: socket.socket) -> None:
        address, _since = self._sockets.pop(sock)
        self._per_address[address] -= 1
        if not self._per_address[address]:
            del self._per_address[address]

    def _admit(self, sock: socket.socket, address: str) -> bool:
        """Count a new connection in, or refuse it before any thread exists for it."""
        victim = None
        with self._lock:
            if self._per_address[address] >= self.max_per_address:
                why = f"{self.max_per_address} open from {address} (dicom.max_per_address)"
            elif len(self._sockets) >= self.max_connections and not (
                victim := self._victim(address)
            ):
                why = f"{self.max_connections} connections open (dicom.max_connections)"
            else:
                if victim is not None:  # its thread ends when its socket does
                    self._release(victim)
                    self._evicted.add(victim)
                self._sockets[sock] = (address, time.monotonic())
                self._per_address[address] += 1
                why = ""
        if victim is not None:
            try:
                victim.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if not why:
            return True
        with self._lock:
            self._refused += 1
            now = time.monotonic()
            if now - self._refusal_logged >= REFUSAL_LOG_SECONDS:
                self._refusal_logged = now
                log.warning(
                    "closed a DICOM connection from %s at once: %s; %d refused so far",
                    address,
                    why,
                    self._refused,
                )
        sock.close()
        return False

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, addr = self.listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                log.exception("accepting a DICOM connection failed")
                continue
            if not self._admit(sock, addr[0]):
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._run, args=(sock, addr), daemon=True).start()

    def _run(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        assoc = Association(self, sock, f"{addr[0]}:{addr[1]}")
        try:
            assoc.run()
        finally:
            with self._lock:
                if sock in self._evicted:
                    self._evicted.discard(sock)  # its place was given away already
                else:
                    self._release(sock)
                if sock in self._associated:
                    self._associated.discard(sock)
                    self._associations -= 1

    def shutdown(self) -> None:
        self._stopping.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread in accept()
        except OSError:
            pass
        self.listener.close()
        with self._lock:
            for sock in list(self._sockets):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def start(config: Config, store: Store) -> Receiver:
    """Start the receiver in the background."""
    receiver = Receiver(config, store).start()
    d = config["dicom"]
    log.info(
        "DICOM receiver %s listening on %s:%s (native upper layer)",
        d["ae_title"],
        d["host"],
        d["port"],
    )
    return receiver
