"""The daemon's URLs, from server.host and server.port: built here and nowhere else.

Two views of the same bind address:

* ``healthz_url``: where a command on this machine (``cwhook status``, ``cwhook accounts``) asks
  the running daemon. A wildcard bind is asked on the loopback of its family: ``0.0.0.0`` (and an
  empty host) on 127.0.0.1, ``::`` on ::1, since the daemon's IPv6 sockets are IPv6-only
  (asyncio sets IPV6_V6ONLY), so nothing answers ``::`` on 127.0.0.1. The caller must not go
  through a proxy (``http_proxy`` would otherwise be used for it).
* ``public_base_url``: what a media server, usually on another machine, is given
  (``cwhook urls``): server.public_url when set, else this machine's name for a wildcard bind.

An IPv6 literal is written in brackets, whether server.host has them or not.
"""

from __future__ import annotations

import ipaddress
import socket

HEALTHZ = "/healthz"


def _bare(host: str) -> str:
    host = host.strip()
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _wildcard(host: str) -> int | None:
    """4 or 6 when ``host`` (bare) binds every address of that family; None otherwise."""
    if host in ("", "*"):
        return 4
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    return address.version if address.is_unspecified else None


def url_host(host: str) -> str:
    """``host`` as the authority of a URL: an IPv6 literal in brackets."""
    bare = _bare(host)
    return f"[{bare}]" if ":" in bare else bare


def local_host(host: str) -> str:
    """The address a client on this machine reaches a daemon bound to ``host`` at."""
    bare = _bare(host)
    family = _wildcard(bare)
    if family == 4:
        return "127.0.0.1"
    if family == 6:
        return "::1"
    return bare


def healthz_url(host: str, port: int) -> str:
    """The running daemon's /healthz, asked from this machine (never through a proxy)."""
    return f"http://{url_host(local_host(host))}:{port}{HEALTHZ}"


def public_base_url(public_url: str, host: str, port: int) -> str:
    """The scheme, host and port a media server is given: ``public_url`` when set."""
    if public_url:
        return public_url
    shown = (socket.gethostname() or "localhost") if _wildcard(_bare(host)) else host
    return f"http://{url_host(shown)}:{port}"
