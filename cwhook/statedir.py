"""The state directory is private: created 0700, its files 0600 (viewing history is personal).

``cwhook run`` sets the process umask to 0o077 (PRIVATE_UMASK) so that every file
the daemon creates there (the database, its -wal/-shm, locks, journals) is 0600
whatever module creates it; ``ensure_private_dir`` creates the directory and
tightens files left readable by an older version.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

from cwhook.config import owner_name, user_name

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600


class StateDirError(Exception):
    """state.dir cannot be used; the message names the directory, the cause and the fix."""


def ensure_private_dir(path: Path, config_path: Path | None = None) -> None:
    """Create ``path`` (mode 0700) if missing, check it is writable, make its files 0600."""
    where = f" in {config_path}" if config_path else ""
    me = user_name()
    try:
        if not path.is_dir():
            _make_dirs(path)
        # A real write, not os.access: root, read-only mounts and immutable dirs all tell the truth.
        with tempfile.TemporaryFile(dir=path, prefix=".cwhook-probe-"):
            pass
    except OSError as exc:
        raise StateDirError(_message(path, exc, me, where)) from None
    foreign = _foreign_file(path, me)
    if foreign:
        raise StateDirError(foreign)
    _tighten_files(path)


def state_dir_problem(path: Path, config_path: Path | None = None) -> str | None:
    """What would keep the user running this from creating or using ``path``, found without
    creating it (`cwhook check-config`); None when `cwhook run` as this user could use it."""
    where = f" in {config_path}" if config_path else ""
    me = user_name()
    try:
        if path.is_dir():
            with tempfile.TemporaryFile(dir=path, prefix=".cwhook-probe-"):
                pass
            return _foreign_file(path, me)
        parent = path
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(parent))
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".cwhook-probe-"))
    except OSError as exc:
        return _message(path, exc, me, where)
    return None


def _foreign_file(path: Path, me: str) -> str | None:
    """A file in the directory this user cannot read and write (root ran `cwhook run` once)."""
    with contextlib.suppress(OSError), os.scandir(path) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False) and not os.access(entry.path, os.R_OK | os.W_OK):
                    owner = owner_name(entry.stat(follow_symlinks=False).st_uid)
                    return (f"state.dir {path}: user {me} cannot use {entry.name} in it: it belongs to {owner} "
                            f"(did {owner} run cwhook once?). Fix: give the directory back to the user that "
                            f"runs the daemon: `sudo chown -R {me} {path}`")
    return None


def _make_dirs(path: Path) -> None:
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, DIR_MODE)
        os.chmod(d, DIR_MODE)  # mkdir's mode is filtered by the umask; state it exactly


def _tighten_files(path: Path) -> None:
    """Files an older version left group- or world-readable become 0600 (our own files only)."""
    with contextlib.suppress(OSError), os.scandir(path) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if (stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()
                        and stat.S_IMODE(st.st_mode) & 0o077):
                    os.chmod(entry.path, stat.S_IMODE(st.st_mode) & ~0o077 & 0o7777)


def _message(path: Path, exc: OSError, me: str, where: str) -> str:
    cause = exc.strerror or str(exc)
    if exc.errno == errno.EROFS:
        return (f"state.dir {path}: cannot write there ({cause}). Fix: under systemd the unit's "
                f"StateDirectory= (or ReadWritePaths=) must cover it; or set state.dir{where} to a writable "
                "directory")
    if exc.errno in (errno.EACCES, errno.EPERM):
        try:
            uid = os.stat(path).st_uid
        except OSError:
            uid = None
        if uid is not None and uid != os.geteuid():  # left by another user (root ran cwhook once?)
            return (f"state.dir {path}: user {me} cannot write it ({cause}): it belongs to {owner_name(uid)}. "
                    f"Fix: give it to the user that runs the daemon: `sudo chown -R {me} {path}`, or set "
                    f"state.dir{where} to a directory {me} owns")
        if uid is not None:
            return (f"state.dir {path}: user {me} cannot write it ({cause}). Fix: `chmod 0700 {path}`, "
                    f"or set state.dir{where} to a directory {me} owns")
        return (f"state.dir {path}: user {me} cannot create or write it ({cause}). Fix: "
                f"`install -d -o {me} -m 0700 {path}`, or set state.dir{where} to a directory {me} owns")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"state.dir {path}: no space left ({cause}). Fix: free some space"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"state.dir {path}: it or a parent is not a directory ({cause}). Fix: set state.dir{where}"
    return f"state.dir {path}: cannot use it ({cause}). Fix: set state.dir{where} to a writable directory"
