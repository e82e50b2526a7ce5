"""Rewriting the configuration file in place: first run, webhook tokens, Trakt tokens.

Every write starts from the bytes on disk at that moment (so a hand edit made
while the daemon runs is kept), holds an exclusive lock on ``<file>.lock`` so
two writers never interleave, and replaces the file atomically (cwhook/config/atomic.py).

A read is the base of a rewrite only when it is complete: it parses, has no
duplicate keys, has every key the last good version had, and has settled
(cwhook/config/settle.py: an editor may be half-way through writing it in place).
Otherwise the writer reads again for up to 10 s, then gives up with ConfigWriteError.

The keys of the last good version are kept on disk beside the file
(cwhook/config/keyrecord.py). The record only grows by itself: a read lacking a
recorded key leaves it as it is; a removal is taken as deliberate when the person
says so by ``cwhook check-config``, a daemon start or SIGHUP (docs/configuration.md, "Rewrites").
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

import yaml

from cwhook.config import keyrecord, settle
from cwhook.config.atomic import (
    NEW_FILE_MODE,
    ConfigWriteError,
    check_writable,
    fsync_dir,
    locked,
    write_atomic,
    write_failure,
)
from cwhook.config.keyrecord import KeyPath
from cwhook.config.schema import SERVERS, Config, ConfigError, load_config, unreadable
from cwhook.config.settle import Stamp
from cwhook.config.urls import example_config_text, new_token
from cwhook.config.yamledit import Scalar, edit_yaml
from cwhook.config.yamlerrors import duplicate_keys, explain_yaml_error, key_paths

__all__ = ["ConfigFiles", "ConfigWriteError", "check_writable", "fsync_dir", "key_paths", "locked",
           "write_atomic", "write_failure"]

REWRITE_WAIT = settle.GIVE_UP  # how long a writer waits for a complete file before giving up
REREAD_PAUSE = 0.2


def _key(path: Path) -> str:
    return os.path.realpath(path)


class ConfigFiles:
    """What one process knows of the config files it read and wrote, and the rewrites that use it.

    Per file (absolute path): the key paths of the last good version (used when its record
    on disk cannot be read), and the stamp of our own last write (a file we wrote ourselves
    needs no settling time). The daemon's composition root makes one, and so does each command.
    """

    def __init__(self) -> None:
        self.last_good: dict[str, frozenset[KeyPath]] = {}
        self.own_write: dict[str, Stamp] = {}

    def _expected(self, path: Path) -> frozenset[KeyPath]:
        """The keys a base read must have: the record on disk, else what this process last saw."""
        record = keyrecord.read_record(path)
        return record if record is not None else self.last_good.get(_key(path), frozenset())

    def _save_record(self, path: Path, keys: frozenset[KeyPath]) -> None:
        self.last_good[_key(path)] = keys
        keyrecord.write_record(path, keys)

    def remember(self, config: Config, deliberate: bool = False, create: bool = False) -> list[str]:
        """A good read of ``config.path`` (it parsed and validated): later rewrites need its keys.

        The file is read again for its key paths. They replace the record when they include
        every recorded key, or when the removal is ``deliberate`` (check-config, a daemon start,
        SIGHUP); otherwise the record stays as it was. A record is only made for a file cwhook
        manages (``create``: the daemon's own; or by a rewrite), never beside a file a command
        merely read. Returns the recorded keys a deliberate read no longer has (outermost only),
        for the person to see.
        """
        path = Path(os.path.realpath(config.path))
        try:
            text = path.read_bytes().decode("utf-8-sig")
            keys = config.keys if config.source and text == config.source else keyrecord.keys_of_text(text)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return []  # changed or gone since: the next good read records it
        record = keyrecord.read_record(path)
        expected = record if record is not None else self.last_good.get(_key(path), frozenset())
        gone = expected - keys
        if gone and not deliberate:
            self.last_good.setdefault(_key(path), expected)
            return []
        if record == keys or (record is None and not create):
            self.last_good[_key(path)] = keys  # nothing to write: read-only commands stay read-only
            return keyrecord.outermost(gone)
        try:
            with locked(path):
                self._save_record(path, keys)
        except (OSError, ConfigWriteError):
            self.last_good[_key(path)] = keys
        return keyrecord.outermost(gone)

    def settled(self, path: Path, stamp: Stamp | None, raw: bytes | None = None) -> bool:
        """The file has settled (cwhook/config/settle.py), or its last change was our own write."""
        return (stamp is not None and self.own_write.get(_key(path)) == stamp) or \
            settle.unsettled_for(stamp, raw) == 0

    def update_file(self, path: Path, changes: Mapping[KeyPath, Scalar], wait: float | None = None) -> None:
        """Set the given key paths in the YAML file on disk, keeping every other byte.

        Raises ConfigWriteError (cause and fix in its message) when the file cannot
        be written or stays incomplete for ``wait`` seconds (default REWRITE_WAIT).
        """
        path = Path(os.path.realpath(path))  # a symlinked config: rewrite its target, keep the link
        wait = REWRITE_WAIT if wait is None else wait
        deadline = time.monotonic() + wait
        try:
            with locked(path):
                while (problem := self._rewrite_once(path, changes)) is not None:
                    if time.monotonic() >= deadline:
                        fix = (f"Fix the file (`cwhook check-config -c {path}` shows its problems), then try "
                               "again" if "it lacks" not in problem else
                               f"If you removed them on purpose, run `cwhook check-config -c {path}` (it "
                               "records the file as it is now), then run this again")
                        raise ConfigWriteError(
                            f"{path} was not rewritten, nothing was changed: {problem}. Waited "
                            f"{wait:g} s for a complete file. {fix}")
                    time.sleep(REREAD_PAUSE)
        except OSError as exc:
            raise write_failure(path, exc) from None

    def _rewrite_once(self, path: Path, changes: Mapping[KeyPath, Scalar]) -> str | None:
        """One try (the lock held): None once written, else why this read is no base for it."""
        stamp = settle.stamp(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ConfigWriteError(f"{path}: no such file (moved or deleted?); nothing was written") from None
        except OSError as exc:
            raise ConfigWriteError(unreadable(path, exc)) from None
        problem = _unfit(raw, self._expected(path))
        if problem is not None:
            return problem
        if stamp != settle.stamp(path) or not self.settled(path, stamp, raw):
            return "it is being written right now"
        edited = edit_yaml(raw.decode("utf-8-sig"), changes)
        data = edited.encode("utf-8")
        if raw.startswith(b"\xef\xbb\xbf"):
            data = b"\xef\xbb\xbf" + data
        if settle.stamp(path) != stamp:  # somebody wrote meanwhile
            return "it is being written right now"
        if data != raw:
            write_atomic(path, data)
        self._save_record(path, keyrecord.keys_of_text(edited))
        new_stamp = settle.stamp(path)
        if new_stamp is not None:
            self.own_write[_key(path)] = new_stamp
        return None

    def load_settled(self, path: Path, wait: float = REWRITE_WAIT) -> Config:
        """The config a command is about to rewrite: read once the file has stopped changing
        and parses, waiting up to ``wait`` seconds (an editor may be saving it right now)."""
        deadline = time.monotonic() + wait
        while True:
            if self.settled(path, settle.stamp(path)):
                try:
                    return load_config(path)
                except ConfigError:
                    if time.monotonic() >= deadline:
                        raise
            elif time.monotonic() >= deadline:
                return load_config(path)
            time.sleep(0.1)

    def create_default(self, path: Path) -> None:
        """First run: write the documented example with fresh tokens, mode 0600."""
        text = edit_yaml(
            example_config_text(),
            {("webhooks", server, "token"): new_token() for server in SERVERS},
        )
        try:
            if path.parent and not path.parent.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
            with locked(path):
                if path.exists():  # somebody else created it meanwhile: keep theirs
                    return
                write_atomic(path, text.encode("utf-8"), NEW_FILE_MODE)
                self._save_record(Path(os.path.realpath(path)), keyrecord.keys_of_text(text))
        except OSError as exc:
            raise write_failure(path, exc) from None

    def fill_missing_tokens(self, config: Config) -> Config:
        """Generate and write back a token for every enabled server that has none."""
        missing = [s for s in SERVERS if not config.webhook(s).token]
        if not missing:
            return config
        self.update_file(config.path, {("webhooks", s, "token"): new_token() for s in missing})
        return load_config(config.path)

    def rotate_tokens(self, config: Config, servers: list[str]) -> Config:
        self.update_file(config.path, {("webhooks", s, "token"): new_token() for s in servers})
        return load_config(config.path)


def _unfit(raw: bytes, expected: frozenset[KeyPath]) -> str | None:
    """Why these bytes must not be the base of a rewrite, or None."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return f"it is not UTF-8 text (byte {exc.start})"
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        line, what = explain_yaml_error(exc, text)
        return f"it is not valid YAML{f' (line {line})' if line else ''}: {what}"
    dups = duplicate_keys(node)
    if dups:
        key_path, line, first = dups[0]
        return f"{'.'.join(key_path)} is there twice (lines {first} and {line}): keep only one of them"
    gone = expected - key_paths(node)
    if gone:
        names = keyrecord.outermost(gone)
        return (f"it lacks {', '.join(names)}, which it had when cwhook last read it whole (an editor "
                "still writing it, or a truncated file?)")
    return None
