"""A slow link for tests: a TCP proxy on 127.0.0.1 that forwards each direction at a
fixed rate, so a transfer through it stays under way long enough to act beside it."""

from __future__ import annotations

import socket
import threading
import time


class SlowLink:
    def __init__(self, target: tuple[str, int], rate: int) -> None:
        self.target = target
        self.rate = rate  # bytes per second, each direction of each connection
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def multiaddr(self, peer_id: str) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.port}/p2p/{peer_id}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        piece = max(1, self.rate // 20)  # 20 sends a second
        try:
            while True:
                data = src.recv(piece)
                if not data:
                    break
                dst.sendall(data)
                time.sleep(len(data) / self.rate)  # the link's speed, not a wait for state
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        for s in self._sockets:
            s.close()
