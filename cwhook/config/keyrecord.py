"""The keys the config file had when it was last read whole, on disk beside it in ``<file>.keys``.

Key paths only, no values; owned like the file, 0600. A command started while an editor
pauses mid-save compares its read with the version before the save, not with the partial
read itself (docs/configuration.md, "Rewrites").
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import yaml

from cwhook.config import atomic
from cwhook.config.yamlerrors import key_paths

KeyPath = tuple[str, ...]

RECORD_SUFFIX = ".keys"


def keys_of_text(text: str) -> frozenset[KeyPath]:
    return key_paths(yaml.compose(text, Loader=yaml.SafeLoader))


def outermost(gone: frozenset[KeyPath]) -> list[str]:
    """The removed keys as a person names them: ``a.b`` for a whole section, not each key under it."""
    return sorted(".".join(p) for p in gone if not any(p[:n] in gone for n in range(1, len(p))))


def record_path(path: Path) -> Path:
    return path.with_name(path.name + RECORD_SUFFIX)


def read_record(path: Path) -> frozenset[KeyPath] | None:
    try:
        raw = record_path(path).read_text("utf-8")
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


def write_record(path: Path, keys: frozenset[KeyPath]) -> None:
    """Write ``<file>.keys`` unless it says this already (best effort: a directory we cannot
    write keeps the old record)."""
    if read_record(path) == keys:
        return
    text = (f"# cwhook: the keys {path.name} had when it was last read whole. A rewrite of it (rotate-tokens,\n"
            "# auth, token refresh) refuses a read lacking one of them; `cwhook check-config` records the\n"
            "# file as it is now. See docs/configuration.md, \"Rewrites\".\n"
            + "".join(json.dumps(list(k)) + "\n" for k in sorted(keys)))
    record = record_path(path)
    with contextlib.suppress(OSError):
        atomic.write_atomic(record, text.encode("utf-8"), atomic.NEW_FILE_MODE)
        owner = atomic.owner_of(path)
        if owner is not None and os.geteuid() == 0 and atomic.owner_of(record) != owner:
            os.chown(record, *owner)  # root on the service user's file: the daemon reads it too
