"""Writing the configuration file: atomic in-place updates, first run, webhook tokens.

Every write starts from the bytes on disk at that moment (so a hand edit made
while the daemon runs is kept), holds an exclusive lock on ``<file>.lock`` so
two writers never interleave, writes a temporary file in the same directory,
fsyncs it, keeps the file's mode, owner and group and renames it over the
original.

A read is the base of a rewrite only when it is complete: it parses, has no
duplicate keys, has every key the last good version had, and has not changed
for a second (an editor may be half-way through writing it in place). Otherwise
the writer reads again for up to 10 s, then gives up with ConfigWriteError.

The keys of the last good version are kept on disk beside the file, in
``<file>.keys`` (key paths only, no values; owned like the file, 0600), so a
command started while an editor pauses mid-save compares its read with the
version before the save, not with the partial read itself. The record only
grows by itself: a read lacking a recorded key leaves it as it is; a removal
is taken as deliberate when the person says so by ``cwhook check-config``,
a daemon start or SIGHUP (docs/configuration.md, "Rewrites").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import tempfile
import time
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path

import yaml

from cwhook.config.address import public_base_url
from cwhook.config.schema import (
    SERVERS,
    Config,
    ConfigError,
    load_config,
    owner_name,
    ownership_fix,
    run_as,
    unreadable,
    user_name,
)
from cwhook.config.yamledit import Scalar, edit_yaml
from cwhook.config.yamlerrors import duplicate_keys, explain_yaml_error
from cwhook.sources.registry import SOURCES

NEW_FILE_MODE = 0o600
REWRITE_WAIT = 10.0  # how long a writer waits for a complete file before giving up
REREAD_PAUSE = 0.2
SETTLED = 1.0  # a file changed less than this long ago may still be being written
# A file that does not end with a line break was most likely cut short by an editor pausing
# mid-save (a value cut inside the last line still parses, with every key): it is taken as
# the base of a rewrite only once it has not changed for this long.
UNTERMINATED_SETTLED = 5.0

KeyPath = tuple[str, ...]
Stamp = tuple[int, int, int, int]

RECORD_SUFFIX = ".keys"

# Per file (absolute path): the key paths of the last good version (when its record
# on disk cannot be read), and the stamp of our own last write (a file we wrote
# ourselves needs no settling time).
_last_good: dict[str, frozenset[KeyPath]] = {}
_own_write: dict[str, Stamp] = {}


class ConfigWriteError(Exception):
    """The file was not rewritten; the message names the cause and the fix."""


def example_config_text() -> str:
    return resources.files("cwhook").joinpath("config.example.yml").read_text("utf-8")


def new_token() -> str:
    """A fresh webhook token: 43 URL-safe characters (256 bits)."""
    return secrets.token_urlsafe(32)


def _key(path: Path) -> str:
    return os.path.realpath(path)


def _stamp(path: Path) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_size)


def key_paths(node: yaml.Node | None, prefix: KeyPath = ()) -> frozenset[KeyPath]:
    """Every key path of the YAML mappings in ``node`` (list items are values, not keys)."""
    out: set[KeyPath] = set()
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                path = (*prefix, str(key_node.value))
                out.add(path)
                out |= key_paths(value_node, path)
    return frozenset(out)


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + RECORD_SUFFIX)


def _read_record(path: Path) -> frozenset[KeyPath] | None:
    try:
        raw = _record_path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    keys: set[KeyPath] = set()
    for line in raw.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            return None  # a damaged record is no record (the memory of this process still counts)
        if isinstance(item, list) and item and all(isinstance(k, str) for k in item):
            keys.add(tuple(item))
    return frozenset(keys)


def _expected(path: Path) -> frozenset[KeyPath]:
    """The keys a base read must have: the record on disk, else what this process last saw."""
    record = _read_record(path)
    return record if record is not None else _last_good.get(_key(path), frozenset())


def _save_record(path: Path, keys: frozenset[KeyPath]) -> None:
    """Write ``<file>.keys`` (best effort: a directory we cannot write keeps the old record)."""
    _last_good[_key(path)] = keys
    if _read_record(path) == keys:
        return
    text = (f"# cwhook: the keys {path.name} had when it was last read whole. A rewrite of it (rotate-tokens,\n"
            "# auth, token refresh) refuses a read lacking one of them; `cwhook check-config` records the\n"
            "# file as it is now. See docs/configuration.md, \"Rewrites\".\n"
            + "".join(json.dumps(list(k)) + "\n" for k in sorted(keys)))
    record = _record_path(path)
    with contextlib.suppress(OSError):
        _write_file(record, text.encode("utf-8"), NEW_FILE_MODE)
        owner = _owner_of(path)
        if owner is not None and os.geteuid() == 0 and _owner_of(record) != owner:
            os.chown(record, *owner)  # root on the service user's file: the daemon reads it too


def remember(config: Config, deliberate: bool = False, create: bool = False) -> list[str]:
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
        keys = key_paths(yaml.compose(path.read_bytes().decode("utf-8-sig"), Loader=yaml.SafeLoader))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []  # changed or gone since: the next good read records it
    record = _read_record(path)
    expected = record if record is not None else _last_good.get(_key(path), frozenset())
    gone = expected - keys
    if gone and not deliberate:
        _last_good.setdefault(_key(path), expected)
        return []
    if record == keys or (record is None and not create):
        _last_good[_key(path)] = keys  # nothing to write: read-only commands stay read-only
        return _outermost(gone)
    try:
        with locked(path):
            _save_record(path, keys)
    except (OSError, ConfigWriteError):
        _last_good[_key(path)] = keys
    return _outermost(gone)


def _outermost(gone: frozenset[KeyPath]) -> list[str]:
    return sorted(".".join(p) for p in gone if not any(p[:n] in gone for n in range(1, len(p))))


def _directory(path: Path) -> Path:
    return Path(os.path.abspath(path)).parent


def write_failure(path: Path, exc: OSError) -> ConfigWriteError:
    """What went wrong writing ``path`` (or its lock or temporary file), and the fix."""
    directory = _directory(path)
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


def _owner_of(path: Path) -> tuple[int, int] | None:
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
        owner = _owner_of(path)
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
    _write_file(path, data, mode)


def _write_file(path: Path, data: bytes, mode: int | None = None) -> None:
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    if mode is None:
        mode = st.st_mode & 0o7777 if st is not None else NEW_FILE_MODE
    directory = _directory(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            if st is not None:
                _keep_owner(fh.fileno(), path, st)
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


def _keep_owner(fd: int, path: Path, st: os.stat_result) -> None:
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
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=_directory(path))
            try:
                _keep_owner(fd, path, st)
            finally:
                os.close(fd)
                os.unlink(tmp)
    except OSError as exc:
        raise write_failure(path, exc) from None


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
        names = _outermost(gone)
        return (f"it lacks {', '.join(names)}, which it had when cwhook last read it whole (an editor "
                "still writing it, or a truncated file?)")
    return None


def update_file(path: Path, changes: Mapping[KeyPath, Scalar], wait: float | None = None) -> None:
    """Set the given key paths in the YAML file on disk, keeping every other byte.

    Raises ConfigWriteError (cause and fix in its message) when the file cannot
    be written or stays incomplete for ``wait`` seconds (default REWRITE_WAIT).
    """
    path = Path(os.path.realpath(path))  # a symlinked config: rewrite its target, keep the link
    key = _key(path)
    deadline = time.monotonic() + (REWRITE_WAIT if wait is None else wait)
    try:
        with locked(path):
            while True:
                stamp = _stamp(path)
                try:
                    raw = path.read_bytes()
                except FileNotFoundError:
                    raise ConfigWriteError(f"{path}: no such file (moved or deleted?); nothing was written"
                                           ) from None
                except OSError as exc:
                    raise ConfigWriteError(unreadable(path, exc)) from None
                problem = _unfit(raw, _expected(path))
                if problem is None and (stamp != _stamp(path) or not _settled(key, stamp, raw)):
                    problem = "it is being written right now"
                if problem is None:
                    has_bom = raw.startswith(b"\xef\xbb\xbf")
                    edited = edit_yaml(raw.decode("utf-8-sig"), changes)
                    data = edited.encode("utf-8")
                    if has_bom:
                        data = b"\xef\xbb\xbf" + data
                    if _stamp(path) == stamp:  # nobody wrote meanwhile
                        if data != raw:
                            write_atomic(path, data)
                        _save_record(path, key_paths(yaml.compose(edited, Loader=yaml.SafeLoader)))
                        new_stamp = _stamp(path)
                        if new_stamp is not None:
                            _own_write[key] = new_stamp
                        return
                    problem = "it is being written right now"
                if time.monotonic() >= deadline:
                    fix = (f"Fix the file (`cwhook check-config -c {path}` shows its problems), then try again"
                           if "it lacks" not in problem else
                           f"If you removed them on purpose, run `cwhook check-config -c {path}` (it records "
                           "the file as it is now), then run this again")
                    raise ConfigWriteError(
                        f"{path} was not rewritten, nothing was changed: {problem}. Waited "
                        f"{REWRITE_WAIT if wait is None else wait:g} s for a complete file. {fix}")
                time.sleep(REREAD_PAUSE)
    except OSError as exc:
        raise write_failure(path, exc) from None


def _settled(key: str, stamp: Stamp | None, raw: bytes = b"\n") -> bool:
    """The file has not changed for SETTLED seconds (UNTERMINATED_SETTLED when ``raw`` does not
    end with a line break), or the last change was our own write."""
    if stamp is None or _own_write.get(key) == stamp:
        return True
    age = time.time() - stamp[0] / 1e9
    needed = SETTLED if not raw or raw.endswith((b"\n", b"\r")) else UNTERMINATED_SETTLED
    return age >= needed or age < -needed  # a clock far off: do not wait for it


def load_settled(path: Path, wait: float = REWRITE_WAIT) -> Config:
    """The config a command is about to rewrite: read once the file has stopped changing
    and parses, waiting up to ``wait`` seconds (an editor may be saving it right now)."""
    deadline = time.monotonic() + wait
    while True:
        if _settled(_key(path), _stamp(path)):
            try:
                return load_config(path)
            except ConfigError:
                if time.monotonic() >= deadline:
                    raise
        elif time.monotonic() >= deadline:
            return load_config(path)
        time.sleep(0.1)


def create_default(path: Path) -> None:
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
            _save_record(Path(os.path.realpath(path)), key_paths(yaml.compose(text, Loader=yaml.SafeLoader)))
    except OSError as exc:
        raise write_failure(path, exc) from None


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
    return public_base_url(config.server.public_url, config.server.host, config.server.port)


def webhook_url(config: Config, server: str) -> str:
    return f"{base_url(config)}{SOURCES[server].path}?{config.webhook(server).token}"


def urls_text(config: Config, servers: tuple[str, ...] = SERVERS) -> str:
    lines = []
    for server in servers:
        hook = config.webhook(server)
        state = "" if hook.enabled else "   (disabled in config)"
        url = webhook_url(config, server)
        lines.append(f"{server}: {url}{state}")
        lines.append("  try it: " + SOURCES[server].try_it(url))
    lines.append("(a try-it line is a test, X-Cwhook-Dry-Run: 1: its answer says what would be sent to which "
                 "Trakt account; nothing is stored or sent)")
    return "\n".join(lines)
