"""A TCP server of a test's on an address of the loopback (`Accepting`): each connection it accepts is handled by
the subclass's `_one`, in a thread of its own. Its attributes are set before `Accepting.__init__`, which starts it."""

from __future__ import annotations

import socket
import threading


class Accepting:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.listening = socket.create_server((host, 0))
        self.port = self.listening.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self.listening.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listening.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        raise NotImplementedError
