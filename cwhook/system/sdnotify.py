"""systemd's notify protocol: a datagram to $NOTIFY_SOCKET (no dependency needed).

The variables (NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID) are read by
cwhook/service/environment.py and given to the constructor."""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, address: str = "", watchdog_usec: str | None = None,
                 watchdog_pid: str | None = None) -> None:
        self.address = address
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._sock: socket.socket | None = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def notify(self, message: str) -> bool:
        if self._sock is None:
            return False
        target = self.address
        if target.startswith("@"):  # abstract namespace
            target = "\0" + target[1:]
        try:
            self._sock.sendto(message.encode(), target)
        except OSError:
            return False
        return True

    def watchdog_interval(self) -> float | None:
        """Half of WatchdogSec when systemd asks for pings (WATCHDOG_USEC), else None."""
        usec, pid = self._watchdog_usec, self._watchdog_pid
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return max(0.5, int(usec) / 1_000_000 / 2)
        except ValueError:
            return None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
