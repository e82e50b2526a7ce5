"""Can the daemon listen on server.host:server.port? The cause in words, with the key to change.

``cwhook run`` asks before it prints anything else, so a taken port is the first
and only thing the user reads; the daemon uses the same words if the real
listen fails anyway (a race with another program).
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path


def bind_error(host: str, port: int) -> OSError | None:
    """Bind (without listening) every address the server would bind; the first error, or None."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:  # socket.gaierror: an unknown host name
        return exc
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
        except OSError as exc:
            return exc
        finally:
            sock.close()
    return None


def listen_problem(host: str, port: int, exc: OSError, config_path: Path) -> str:
    """One line: what stops the daemon from listening, and which key to change in which file."""
    where = f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return (f"cannot listen on {where}: server.host {host!r} is not a known address ({exc.strerror}). "
                f"Fix: set server.host in {config_path} to an IP address of this machine, or 0.0.0.0 for all")
    if exc.errno == errno.EADDRINUSE:
        return (f"cannot listen on {where}: the port is already in use (another program, or another cwhook). "
                f"Fix: stop it, or set server.port in {config_path} to a free port")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"cannot listen on {where}: ports below 1024 need privileges cwhook does not have. "
                f"Fix: set server.port in {config_path} to 1024 or above (the default is 8787)")
    if exc.errno == errno.EADDRNOTAVAIL:
        return (f"cannot listen on {where}: {host} is not an address of this machine. "
                f"Fix: set server.host in {config_path} to one of its addresses, or 0.0.0.0 for all")
    return (f"cannot listen on {where}: {exc.strerror or exc}. "
            f"Fix: check server.host and server.port in {config_path}")
