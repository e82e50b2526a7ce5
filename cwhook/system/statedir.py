"""The state directory is private: created 0700, its files 0600 (viewing history is personal).

``cwhook run`` sets the process umask to 0o077 (PRIVATE_UMASK) so that every file
the daemon creates there (the database, its -wal/-shm, journals) is 0600
whatever module creates it; ``ensure_private_dir`` creates the directory and
tightens files left readable by an older version.

Nobody else may plant files there (docs/durability.md, "The state directory"): an
existing directory of ours that others can enter or write is set to 0700 with a
warning; another user's directory that others can write is refused. A state file
is never followed through a symbolic link and never written when it belongs to
another user (``check_state_file``, ``open_state_file``): a link to another file
would have that file overwritten with the database, or a Trakt token pair
appended to a file someone else can read.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

from cwhook.config.schema import owner_name, user_name
from cwhook.kernel import logs

log = logs.get("cwhook.system.statedir")

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600


class StateDirError(Exception):
    """state.dir cannot be used; the message names the directory, the cause and the fix."""


class UnsafeStateFile(OSError):
    """A state file is a link, not a regular file, or another user's (the message says which)."""

    def __str__(self) -> str:
        return str(self.strerror)


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
    _guard_dir(path, me)
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


def _guard_dir(path: Path, me: str) -> None:
    """Others must not be able to plant files in the state dir: ours is set to 0700 (with a
    warning); another user's that others can write is refused."""
    st = os.stat(path)
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == os.geteuid():
        if mode & 0o077:
            os.chmod(path, DIR_MODE)
            log.warning("state_dir_mode_fixed", state_dir=str(path), was=f"{mode:04o}", now=f"{DIR_MODE:04o}",
                        note="the state dir holds viewing history and Trakt tokens: only its owner may use it")
        return
    if mode & 0o022:
        owner = user_name(st.st_uid)
        raise StateDirError(
            f"state.dir {path}: other users can write it (mode {mode:04o}, owner {owner}), so they could "
            f"plant links to files cwhook would overwrite. Fix: `chown {me} {path} && chmod 0700 {path}`, "
            "or set state.dir to a directory only you can write")


def _unsafe(path: Path, st: os.stat_result) -> str | None:
    """Why cwhook must not use this state file (from its lstat/fstat), or None."""
    me = user_name()
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return (f"state.dir {path.parent}: {path.name} is a symbolic link (to {target}); cwhook never follows "
                f"a link in its state dir. Fix: remove it (`rm {path}`); cwhook makes a new file")
    if not stat.S_ISREG(st.st_mode):
        return (f"state.dir {path.parent}: {path.name} is not a regular file. Fix: remove it "
                f"(`rm -r {path}`); cwhook makes a new file")
    if st.st_uid != os.geteuid():
        owner = user_name(st.st_uid)
        return (f"state.dir {path.parent}: {path.name} belongs to user {owner}, not to {me} who runs cwhook "
                f"(it holds viewing history or Trakt tokens, which {owner} could read). Fix: run cwhook as "
                f"{owner} (`sudo -u {owner} cwhook ...`), or `chown {me} {path}`")
    return None


def check_state_file(path: Path) -> None:
    """Raise StateDirError if ``path`` exists and is a link, not a regular file, or another user's."""
    try:
        st = os.lstat(path)
    except OSError:
        return  # missing (made later), or the real open reports the problem
    problem = _unsafe(path, st)
    if problem:
        raise StateDirError(problem)


def open_state_file(path: Path, flags: int, mode: int = FILE_MODE) -> int:
    """``os.open`` for a state file: never through a link (O_NOFOLLOW), only a regular file of
    the user running cwhook (checked on the open file). UnsafeStateFile (an OSError) otherwise."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        st = os.lstat(path)
        raise UnsafeStateFile(errno.ELOOP, _unsafe(path, st) or str(exc), str(path)) from None
    st = os.fstat(fd)
    problem = None if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() else _unsafe(path, st)
    if problem:
        os.close(fd)
        raise UnsafeStateFile(errno.EPERM, problem, str(path))
    return fd


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
