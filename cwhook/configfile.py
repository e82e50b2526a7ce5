"""Writing the configuration file: atomic in-place updates, first run, webhook tokens.

Every write starts from the bytes on disk at that moment (so a hand edit made
while the daemon runs is kept), holds an exclusive lock on ``<file>.lock`` so
two writers never interleave, writes a temporary file in the same directory,
fsyncs it, keeps the file's mode and renames it over the original.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
import tempfile
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path

from cwhook.config import SERVERS, Config, load_config
from cwhook.yamledit import Scalar, edit_yaml

NEW_FILE_MODE = 0o600
ENDPOINTS = {"plex": "plextrakt", "jellyfin": "jellyfintrakt", "emby": "embytrakt"}


def example_config_text() -> str:
    return resources.files("cwhook").joinpath("config.example.yml").read_text("utf-8")


def new_token() -> str:
    """A fresh webhook token: 43 URL-safe characters (256 bits)."""
    return secrets.token_urlsafe(32)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``<path>.lock`` (created 0600 if missing)."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, NEW_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data``: temp file in the same directory, fsync, rename."""
    if mode is None:
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = NEW_FILE_MODE
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def update_file(path: Path, changes: Mapping[tuple[str, ...], Scalar]) -> None:
    """Set the given key paths in the YAML file on disk, keeping every other byte."""
    with locked(path):
        raw = path.read_bytes()
        has_bom = raw.startswith(b"\xef\xbb\xbf")
        text = raw.decode("utf-8-sig" if has_bom else "utf-8")
        edited = edit_yaml(text, changes)
        data = edited.encode("utf-8")
        if has_bom:
            data = b"\xef\xbb\xbf" + data
        if data != raw:
            write_atomic(path, data)


def create_default(path: Path) -> None:
    """First run: write the documented example with fresh tokens, mode 0600."""
    text = edit_yaml(
        example_config_text(),
        {("webhooks", server, "token"): new_token() for server in SERVERS},
    )
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path):
        if path.exists():  # somebody else created it meanwhile: keep theirs
            return
        write_atomic(path, text.encode("utf-8"), NEW_FILE_MODE)


def fill_missing_tokens(config: Config) -> Config:
    """Generate and write back a token for every enabled server that has none."""
    missing = [s for s in SERVERS if not config.webhook(s).token]
    if not missing:
        return config
    update_file(config.path, {("webhooks", s, "token"): new_token() for s in missing})
    return load_config(config.path)


def rotate_tokens(config: Config, servers: list[str]) -> Config:
    update_file(config.path, {("webhooks", s, "token"): new_token() for s in servers})
    return load_config(config.path)


def base_url(config: Config) -> str:
    if config.server.public_url:
        return config.server.public_url
    host = config.server.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname() or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.server.port}"


def webhook_url(config: Config, server: str) -> str:
    return f"{base_url(config)}/webhook/{ENDPOINTS[server]}?{config.webhook(server).token}"


CURL_EXAMPLES = {
    "plex": (
        "curl -sS -X POST '{url}' -F 'payload={{\"event\":\"media.play\",\"Account\":"
        "{{\"id\":1,\"title\":\"me\"}},\"Player\":{{\"uuid\":\"curl\"}},\"Metadata\":"
        "{{\"type\":\"movie\",\"title\":\"Guardians of the Galaxy\",\"year\":2014,"
        "\"Guid\":[{{\"id\":\"imdb://tt2015381\"}}],\"viewOffset\":60000,\"duration\":7320000}}}}'"
    ),
    "jellyfin": (
        "curl -sS -X POST '{url}' -H 'Content-Type: application/json' -d "
        "'{{\"NotificationType\":\"PlaybackStart\",\"NotificationUsername\":\"me\","
        "\"DeviceId\":\"curl\",\"ItemType\":\"Movie\",\"Name\":\"Guardians of the Galaxy\","
        "\"Year\":2014,\"Provider_imdb\":\"tt2015381\",\"RunTimeTicks\":73200000000,"
        "\"PlaybackPositionTicks\":600000000}}'"
    ),
    "emby": (
        "curl -sS -X POST '{url}' -H 'Content-Type: application/json' -d "
        "'{{\"Event\":\"playback.start\",\"User\":{{\"Name\":\"me\"}},\"Session\":"
        "{{\"DeviceId\":\"curl\"}},\"Item\":{{\"Type\":\"Movie\",\"Name\":\"Guardians of the Galaxy\","
        "\"ProductionYear\":2014,\"ProviderIds\":{{\"Imdb\":\"tt2015381\"}},"
        "\"RunTimeTicks\":73200000000}},\"PlaybackInfo\":{{\"PositionTicks\":600000000}}}}'"
    ),
}


def urls_text(config: Config, servers: tuple[str, ...] = SERVERS) -> str:
    lines = []
    for server in servers:
        hook = config.webhook(server)
        state = "" if hook.enabled else "   (disabled in config)"
        url = webhook_url(config, server)
        lines.append(f"{server}: {url}{state}")
        lines.append("  try it: " + CURL_EXAMPLES[server].format(url=url))
    return "\n".join(lines)
