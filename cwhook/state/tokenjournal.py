"""The token journal: Trakt's refresh answers, on disk before anything else is done with them.

Trakt retires a refresh token the moment it issues the next pair, so the new
pair must survive a crash before the YAML file is rewritten (which takes a lock,
a parse, a temp file and a rename). Each answer is appended as one JSON line to
``trakt-tokens.jsonl`` in the state dir and fsynced; at start the newest pair of
an account wins over an older one in the config file. A torn last line (a crash
mid-write) is skipped. The file is private (0600) and kept small: when it grows
past ``COMPACT_AT`` bytes it is rewritten with the newest pair of each account.
It is never opened through a symbolic link nor used when another user owns it
(``statedir.open_state_file``): tokens are neither sent to nor taken from a file
someone else can read or write.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cwhook.config.file import fsync_dir, write_atomic
from cwhook.system.statedir import open_state_file

FILE_NAME = "trakt-tokens.jsonl"
COMPACT_AT = 64 * 1024


@dataclass(frozen=True)
class Pair:
    access_token: str
    refresh_token: str
    expires_at: int

    def newer_than(self, other: Pair) -> bool:
        """Newer by expiry; a different pair with the same expiry counts as newer."""
        if self.expires_at != other.expires_at:
            return self.expires_at > other.expires_at
        return (self.access_token, self.refresh_token) != (other.access_token, other.refresh_token)


class TokenJournal:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME

    def append(self, account: str, pair: Pair, fsync: bool = True) -> int:
        """One line (a single write, so a crash leaves it whole or torn, never mixed), fsynced
        unless ``fsync`` is False: then the caller runs ``sync`` (off the event loop). Once the
        write returned, the pair survives the death of the process; the fsync covers power loss.
        """
        line = json.dumps({"account": account, "access_token": pair.access_token,
                           "refresh_token": pair.refresh_token, "expires_at": pair.expires_at,
                           "written_at": round(time.time(), 3)}) + "\n"
        fd = open_state_file(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode("utf-8"))
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if fsync:
            self.sync()
        return size

    def sync(self) -> None:
        """fsync the journal and its directory; compact it when it has grown."""
        fd = open_state_file(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        fsync_dir(self.path.parent)
        if size > COMPACT_AT:
            with contextlib.suppress(OSError):
                self._compact()

    def _entries(self) -> list[tuple[str, Pair]]:
        try:
            fd = open_state_file(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return []
        with os.fdopen(fd, "rb") as fh:
            raw = fh.read()
        out = []
        for line in raw.splitlines():
            try:
                data = json.loads(line)
                out.append((str(data["account"]), Pair(str(data["access_token"]),
                            str(data["refresh_token"]), int(data["expires_at"]))))
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a crash
        return out

    def newest(self, account: str) -> Pair | None:
        best: Pair | None = None
        for name, pair in self._entries():
            if name == account and (best is None or pair.expires_at >= best.expires_at):
                best = pair
        return best

    def _compact(self) -> None:
        os.close(open_state_file(self.path, os.O_RDONLY))  # write_atomic would keep a link target's owner
        accounts = {name for name, _ in self._entries()}
        lines = []
        for name in sorted(accounts):
            pair = self.newest(name)
            if pair is not None:
                lines.append(json.dumps({"account": name, "access_token": pair.access_token,
                                         "refresh_token": pair.refresh_token,
                                         "expires_at": pair.expires_at}) + "\n")
        write_atomic(self.path, "".join(lines).encode("utf-8"), 0o600)
