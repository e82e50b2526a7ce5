"""Writing a file in place safely: an exclusive lock beside it, a temporary file in the same
directory, fsync, the owner and mode kept, one rename; errors that name the cause and the fix."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cwhook.config.schema import owner_name, ownership_fix, run_as, user_name

NEW_FILE_MODE = 0o600


class ConfigWriteError(Exception):
    """The file was not rewritten; the message names the cause and the fix."""


def directory_of(path: Path) -> Path:
    return Path(os.path.abspath(path)).parent


def write_failure(path: Path, exc: OSError) -> ConfigWriteError:
    """What went wrong writing ``path`` (or its lock or temporary file), and the fix."""
    directory = directory_of(path)
    if exc.errno == errno.EROFS:
        return ConfigWriteError(
            f"cannot write {path}: {directory} is on a read-only file system; nothing was changed. "
            f"Fix: make {directory} writable (under systemd: list it in ReadWritePaths= of the unit), "
            "or keep the config in a writable directory")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ConfigWriteError(
            f"cannot write {path}: no space left for {directory}; nothing was changed. "
            "Fix: free some space, then run the command again")
    if exc.errno in (errno.EACCES, errno.EPERM):
        me, _, fix = ownership_fix(directory, "writable for", "the command as", "rwx")
        return ConfigWriteError(
            f"cannot write {path}: the directory {directory} is not writable by user {me} (cwhook "
            f"replaces the file through a temporary file beside it and locks {path.name}.lock); "
            f"nothing was changed. Fix: {fix}")
    return ConfigWriteError(f"cannot write {path}: {exc.strerror or exc} ({exc.filename or directory}); "
                            "nothing was changed")


def owner_of(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_uid, st.st_gid


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``<path>.lock`` (created 0600, owned like ``path``)."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, NEW_FILE_MODE)
        owner = owner_of(path)
        if owner is not None and os.geteuid() == 0 and owner != (os.geteuid(), os.getegid()):
            os.fchown(fd, *owner)  # root on the service user's file: the service must open it too
    except FileExistsError:
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except PermissionError:
            try:
                fd = os.open(lock_path, os.O_RDONLY)  # flock needs no write access
            except PermissionError:
                raise ConfigWriteError(
                    f"cannot write {path}: its lock file {lock_path} cannot be opened by user {user_name()}; "
                    f"nothing was changed. Fix: remove it (`rm {lock_path}`), cwhook makes a new one"
                ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data``: temp file in the same directory, fsync, rename.

    The file keeps its mode, owner and group (a command run as root on the
    service user's file leaves it owned by that user); a new file is 0600.
    """
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    if mode is None:
        mode = st.st_mode & 0o7777 if st is not None else NEW_FILE_MODE
    directory = directory_of(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            if st is not None:
                keep_owner(fh.fileno(), path, st)
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable (best effort)."""
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def keep_owner(fd: int, path: Path, st: os.stat_result) -> None:
    """Give the temporary file ``fd`` the owner and group of ``st`` (the file it replaces)."""
    mine = os.fstat(fd)
    uid = -1 if mine.st_uid == st.st_uid else st.st_uid
    gid = -1 if mine.st_gid == st.st_gid else st.st_gid
    if uid == -1 and gid == -1:
        return
    try:
        os.fchown(fd, uid, gid)
    except PermissionError:
        owner = owner_name(st.st_uid)
        also = "" if st.st_uid == 0 else f" or as root (`{run_as(0)}`)"
        raise ConfigWriteError(
            f"cannot write {path} as user {owner_name(os.geteuid())}: it belongs to {owner} (group "
            f"{st.st_gid}), and a rewrite by {owner_name(os.geteuid())} could not keep that owner, so {owner} "
            f"could no longer use it; nothing was changed. Fix: run the command as {owner} "
            f"(`{run_as(st.st_uid)}`){also}") from None


def check_writable(path: Path) -> None:
    """Raise ConfigWriteError now if a rewrite of ``path`` would fail for want of rights."""
    path = Path(os.path.realpath(path))
    try:
        with locked(path):
            st = os.stat(path)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory_of(path))
            try:
                keep_owner(fd, path, st)
            finally:
                os.close(fd)
                os.unlink(tmp)
    except OSError as exc:
        raise write_failure(path, exc) from None
