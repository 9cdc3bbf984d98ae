"""A TCP relay whose link can be cut: bytes stop flowing both ways and new connections
are refused, as when a cellular link drops without either end being told. After
``restore`` the stalled connections are closed (both ends have given up on them by
then) and new ones go through."""

from __future__ import annotations

import selectors
import socket
import threading

from devkit.box import free_port


class Relay:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self.bytes_up = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> Relay:
        self._thread.start()
        return self

    def cut(self) -> None:
        self._cut.set()

    def restore(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass
        self._cut.clear()

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        self.restore()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(a, selectors.EVENT_READ, b)
            sel.register(b, selectors.EVENT_READ, a)
            while not self._stop.is_set():
                if self._cut.is_set():  # hold everything: nothing flows, nothing closes
                    self._stop.wait(0.05)
                    continue
                for key, _ in sel.select(timeout=0.1):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = src.recv(65536)
                    if not data:
                        return
                    if src is a:
                        self.bytes_up += len(data)
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass
