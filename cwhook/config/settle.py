"""When a file on disk may be read whole: it has not changed for a while (an editor may be writing it).

One rule for every reader of the config file: the daemon's reload (cwhook/service/watcher.py)
and a rewrite's base read (cwhook/config/file.py). A change is seen through the file's stamp
(mtime, ctime, inode, size: a chown or a rename counts too).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

Stamp = tuple[int, int, int, int]

SETTLED = 1.0  # a file changed less than this long ago may still be being written
# A file that does not end with a line break was most likely cut short by an editor pausing
# mid-save (a value cut inside the last line still parses, with every key): it is taken as
# the base of a rewrite only once it has not changed for this long.
UNTERMINATED_SETTLED = 5.0
GIVE_UP = 10.0  # a reader waits this long at most for a file that never stops changing


def stamp(path: Path) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_size)  # ctime: chown/chmod count too


def unsettled_for(file_stamp: Stamp | None, raw: bytes | None = None, now: float | None = None) -> float:
    """Seconds until the file with this stamp counts as settled; 0 when it does already.

    Settled: unchanged for SETTLED seconds, or UNTERMINATED_SETTLED when its bytes ``raw``
    (when known) do not end with a line break. A file that is gone is settled (nothing to
    wait for), and so is a modification time far in the future (a clock set back: do not wait).
    """
    if file_stamp is None:
        return 0.0
    age = (time.time() if now is None else now) - file_stamp[0] / 1e9
    needed = SETTLED if not raw or raw.endswith((b"\n", b"\r")) else UNTERMINATED_SETTLED
    if age >= needed or age < -needed:
        return 0.0
    return needed - age
