"""`cwhook status`: ask the running daemon's /healthz and print it for a person.

Exit 0 when it is ok, 1 when it is degraded (or the file on disk is refused), 3 when no
daemon answers. A broken config file is when the daemon's view matters most: its
problems are printed, and the daemon is still asked, at the address that can be read
from the file (or the defaults, or ``--url``).
"""

from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TextIO

import yaml

from cwhook.config.address import healthz_url
from cwhook.config.schema import ConfigError, default, load_config
from cwhook.status import snapshot as status

EXIT_OK = 0
EXIT_DEGRADED = 1
EXIT_NOT_RUNNING = 3
TIMEOUT = 5.0


def local_get(url: str, timeout: float) -> bytes:
    """GET ``url`` of the daemon on this machine (at most 1 MiB): straight, never through the
    proxy ``http_proxy`` names for the outside."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as resp:
        return bytes(resp.read(1 << 20))


# A refused file the daemon cannot use either (not the caller's rights or a wrong -c path).
_NOT_THE_FILES_FAULT = ("unreadable", "no_such_file")
_SERVER_LINE = re.compile(r"^\s+(host|port)\s*:\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s#]+))")


def address(path: Path) -> tuple[str, int]:
    """server.host and server.port as far as they can be read from a file that may be broken
    (a YAML mistake elsewhere in it), else their defaults."""
    host: Any = None
    port: Any = None
    try:
        text = path.read_text("utf-8", errors="replace")
    except OSError:
        text = ""
    try:
        data = yaml.safe_load(text)
        server = data.get("server") if isinstance(data, dict) else None
        if isinstance(server, dict):
            host, port = server.get("host"), server.get("port")
    except yaml.YAMLError:  # the lines under `server:`, one by one
        inside = False
        for line in text.splitlines():
            if line[:1] not in ("", " ", "#", "\t"):
                inside = line.split("#")[0].strip() == "server:"
            elif inside and (m := _SERVER_LINE.match(line)):
                value = next(g for g in m.groups()[1:] if g is not None)
                if m.group(1) == "host" and host is None:
                    host = value
                elif m.group(1) == "port" and port is None:
                    port = int(value) if value.isdigit() else None
    if not isinstance(host, str) or not host.strip():
        host = default("server", "host")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        port = default("server", "port")
    return host, port


def _url(given: str) -> str:
    url = given.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url if url.endswith("/healthz") else url + "/healthz"


def cmd_status(path: Path, url: str | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    refused = failed = False
    try:
        config = load_config(path)
        host, port = config.server.host, config.server.port
    except ConfigError as exc:
        err.write(f"cwhook: {path}: the configuration has problems:\n")
        for problem in exc.problems:
            err.write(f"  {problem}\n")
        refused = not any(p.code in _NOT_THE_FILES_FAULT for p in exc.details)
        failed = url is None
        host, port = address(path)
        if url is None:
            err.write(f"cwhook: asking the daemon anyway, at {healthz_url(host, port)} (server.host and "
                      "server.port as far as the file can be read, else the defaults; --url URL to choose)\n")
    url = _url(url) if url is not None else healthz_url(host, port)
    try:
        raw = local_get(url, TIMEOUT)
    except urllib.error.HTTPError as exc:
        err.write(f"cwhook: something that is not cwhook answers at {url} (HTTP {exc.code}); "
                  f"check server.host and server.port in {path}\n")
        return EXIT_NOT_RUNNING
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
            err.write(f"cwhook: no answer from {url} within {TIMEOUT:g} s: the daemon is not running "
                      "or is stuck (`systemctl status cwhook`, `journalctl -u cwhook`)\n")
        else:
            err.write(f"cwhook: not running: nothing answers at {url} ({reason}). "
                      "Start it (`systemctl start cwhook`) or check server.host and server.port in "
                      f"{path}" + (" (or give the daemon's address with --url)" if failed else "") + "\n")
        return EXIT_NOT_RUNNING
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or "status" not in data:
            raise ValueError("no status")
    except ValueError:
        err.write(f"cwhook: something that is not cwhook answers at {url}; check server.host and "
                  f"server.port in {path}\n")
        return EXIT_NOT_RUNNING
    snapshot = status.from_healthz(data)
    out.write(status.to_text(snapshot, config_path=path))
    if refused and "config_refused" not in snapshot.problems:
        out.write("(the daemon has not refused the file on disk yet: it reads a changed file within a few "
                  "seconds, and will refuse this one)\n")
    return EXIT_OK if snapshot.status == "ok" and not refused else EXIT_DEGRADED
