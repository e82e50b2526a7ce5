"""Who owns the configuration file, and how a message tells the person to get at it."""

from __future__ import annotations

import os
import pwd
from pathlib import Path


def user_name(uid: int | None = None) -> str:
    uid = os.geteuid() if uid is None else uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def owner_name(uid: int) -> str:
    """A user as a message names it: the name, or ``uid 1234`` when it has no passwd entry."""
    name = user_name(uid)
    return f"uid {uid}" if name == str(uid) else name


def run_as(uid: int, command: str = "cwhook ...") -> str:
    """How to run a command as that user (``sudo``, never ``sudo -u root``)."""
    if uid == 0:
        return f"sudo {command}"
    name = user_name(uid)
    return f"sudo -u {name} {command}" if name != str(uid) else f"sudo -u '#{uid}' {command}"


def owning(path: Path) -> tuple[int, Path]:
    """The owner of ``path``, or when it cannot be looked at, of the directory that hides it
    (the nearest one that can be): (uid, which path that is)."""
    p = Path(os.path.abspath(path))
    while True:
        try:
            return os.stat(p).st_uid, p
        except OSError:
            if p == p.parent:
                return 0, p
            p = p.parent


def ownership_fix(path: Path, access: str, runner: str, mode: str = "r") -> tuple[str, str, str]:
    """(who we are, whose ``path`` is, in words, the fix in words).

    Never "give the file to me" when it belongs to another user: that is the service's file
    and the service could no longer use it. Run as its owner instead; a file of root's
    (root ran a command once) may be given to us, when we are the user that runs the daemon."""
    me_uid = os.geteuid()
    me = owner_name(me_uid)
    uid, where = owning(path)
    owner = owner_name(uid)
    if uid == me_uid:
        fix = f"make it {access} {me} (`chmod u+{mode} {where}`)"
    elif uid == 0:
        fix = (f"run {runner} root (`{run_as(0)}`); or, if {me} is the user that runs the daemon, "
               f"make it {access} {me} (`sudo chown {me_uid if me.startswith('uid ') else me} {where}`)")
    else:
        fix = f"run {runner} {owner} (`{run_as(uid)}`)"
    if where != Path(os.path.abspath(path)):
        return me, f"the directory {where} belongs to {owner} and is closed to {me}", fix
    return me, f"it belongs to {owner}", fix


def unreadable(path: Path, exc: OSError) -> str:
    if not isinstance(exc, PermissionError):
        return f"{path}: cannot read: {exc.strerror or exc}"
    me, whose, fix = ownership_fix(path, "readable by", "cwhook as")
    whose = whose.replace("it belongs", "the file belongs", 1)
    return f"{path}: cannot read it as user {me} (permission denied; {whose}): {fix}"
