"""`cwhook status`: ask the running daemon's /healthz and print it for a person.

Exit 0 when it is ok, 1 when it is degraded, 3 when no daemon answers.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import TextIO

from cwhook import status
from cwhook.config import Config

EXIT_OK = 0
EXIT_DEGRADED = 1
EXIT_NOT_RUNNING = 3
TIMEOUT = 5.0


def healthz_url(host: str, port: int) -> str:
    """Where the daemon answers on this machine: a wildcard bind is asked on loopback."""
    host = host.strip()
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def cmd_status(config: Config, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    url = healthz_url(config.server.host, config.server.port)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    try:
        with opener.open(url, timeout=TIMEOUT) as resp:
            raw = resp.read(1 << 20)
    except urllib.error.HTTPError as exc:
        err.write(f"cwhook: something that is not cwhook answers at {url} (HTTP {exc.code}); "
                  f"check server.host and server.port in {config.path}\n")
        return EXIT_NOT_RUNNING
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
            err.write(f"cwhook: no answer from {url} within {TIMEOUT:g} s: the daemon is not running "
                      "or is stuck (`systemctl status cwhook`, `journalctl -u cwhook`)\n")
        else:
            err.write(f"cwhook: not running: nothing answers at {url} ({reason}). "
                      "Start it (`systemctl start cwhook`) or check server.host and server.port in "
                      f"{config.path}\n")
        return EXIT_NOT_RUNNING
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or "status" not in data:
            raise ValueError("no status")
    except ValueError:
        err.write(f"cwhook: something that is not cwhook answers at {url}; check server.host and "
                  f"server.port in {config.path}\n")
        return EXIT_NOT_RUNNING
    snapshot = status.from_healthz(data)
    out.write(status.to_text(snapshot, config_path=config.path))
    return EXIT_OK if snapshot.status == "ok" else EXIT_DEGRADED
