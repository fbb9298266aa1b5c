"""Wake-ups between scantide's processes on one machine (embedded mode), so that an idle worker
takes a task when it is queued and the monitor reads a change when it is made, not at their next
poll. Polling stays as the fallback: a lost ring costs one poll interval, never a task.

A ``Doorbell`` is a folder of Unix datagram sockets, one per listener, named by topic
(``queue``: a task was queued; ``changes``: any task changed state). ``ring(topic)`` sends one
byte to every listener of the topic and removes the sockets of listeners that are gone (a
process killed outright leaves its socket file behind). Nothing is sent anywhere but this
folder, which lives in the state dir (0700).

Without a folder (production: ClearML's server has no such signal) a listener only waits out
its timeout, or until ``wake`` is called (a signal handler stopping the process).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import select
import socket
from pathlib import Path

QUEUE = "queue"  # a task became queued: idle workers claim
CHANGES = "changes"  # a task changed state: the monitor and the conductor read the feed
_MAX_SUN_PATH = 100  # sockaddr_un holds 108 bytes; longer paths go through /proc/self/fd


class Listener:
    """Waits for rings of one topic (or a ``wake``). Use from one thread; ``wake`` from any."""

    def __init__(self, folder: Path | None, topic: str) -> None:
        self._wake_r, self._wake_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sock: socket.socket | None = None
        self.path: Path | None = None
        if folder is not None:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.path = folder / f"{topic}.{os.getpid()}.{secrets.token_hex(4)}.sock"
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            _bind(self._sock, self.path)
            self._sock.setblocking(False)

    def wait(self, timeout_s: float) -> bool:
        """Block up to ``timeout_s``; True when rung or woken (every pending ring is consumed)."""
        ready, _, _ = select.select([s for s in (self._sock, self._wake_r) if s is not None], [], [],
                                    max(0.0, timeout_s))
        for sock in ready:
            _drain(sock)
        return bool(ready)

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # a full buffer is a wake-up already pending
            self._wake_w.send(b"!")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Doorbell:
    """Rings the listeners of a topic in ``folder``; None: a doorbell that rings nobody."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._sender: socket.socket | None = None
        if folder is not None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)

    def listener(self, topic: str) -> Listener:
        return Listener(self.folder, topic)

    def ring(self, *topics: str) -> None:
        if self.folder is None or self._sender is None:
            return
        try:
            names = os.listdir(self.folder)
        except OSError:
            return  # nobody has listened yet
        for name in names:
            if name.endswith(".sock") and name.split(".", 1)[0] in topics:
                self._send(self.folder / name)

    def _send(self, path: Path) -> None:
        assert self._sender is not None
        try:
            _sendto(self._sender, path)
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):  # its listener is gone
                with contextlib.suppress(OSError):
                    path.unlink()
            # EAGAIN: its buffer is full of rings it has not read yet; one more changes nothing

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()
            self._sender = None


def _drain(sock: socket.socket) -> None:
    with contextlib.suppress(BlockingIOError, InterruptedError):
        while sock.recv(64):
            pass


def _via_folder(path: Path, use: object) -> None:
    """Call ``use(address)`` with an address for ``path`` short enough for a Unix socket."""
    if len(os.fsencode(path)) < _MAX_SUN_PATH:
        use(str(path))  # type: ignore[operator]
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        use(f"/proc/self/fd/{fd}/{path.name}")  # type: ignore[operator]
    finally:
        os.close(fd)


def _bind(sock: socket.socket, path: Path) -> None:
    _via_folder(path, sock.bind)


def _sendto(sock: socket.socket, path: Path) -> None:
    _via_folder(path, lambda address: sock.sendto(b"!", address))
