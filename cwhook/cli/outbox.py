"""`cwhook outbox`: the outbox entries set aside, and the user's decision about each.

An entry is set aside when it failed three times for a reason that is not Trakt's
(an answer that is not Trakt's API, a bug), or when cwhook cannot tell whether an
earlier attempt of a late play already reached Trakt's history (docs/durability.md,
"Unsure plays"). It stays in the state file until the user decides:

* ``retry``: back to the outbox, tried at once (a late play asks the history again);
* ``send``: back to the outbox and sent without asking the history (the user saw on
  trakt.tv that the play is not there);
* ``drop``: removed for good (journaled as failed, "dropped by the user").

It works on the state file directly, while the daemon runs (which notices within
seconds) or is stopped.
"""

from __future__ import annotations

import sqlite3
import sys
from typing import TextIO

from cwhook.config.schema import Config
from cwhook.kernel.termtext import visible
from cwhook.state.store import Entry, Store, StoreUnavailable


def entry_line(e: Entry) -> str:
    return visible(f"{e.id}  {e.account}  {e.verb} {e.progress:.0f}%  {e.event.label()}  "
                  f"({e.event.source} {e.event.user_name or '-'}): {e.last_error or '?'}")


def cmd_outbox(config: Config, action: str | None, ids: list[int], every: bool,
               out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        store = Store(config.state_dir)
    except (OSError, sqlite3.Error, StoreUnavailable) as exc:
        err.write(f"cwhook: cannot open the state file in {config.state_dir}: {exc}\n")
        return 1
    try:
        aside = store.set_aside_entries()
        if action is None:
            for e in aside:
                out.write(entry_line(e) + "\n")
            if not aside:
                err.write("nothing is set aside\n")
            else:
                err.write("resolve with `cwhook outbox retry|send|drop ID...` (see docs/durability.md)\n")
            return 0
        chosen = [e.id for e in aside] if every else ids
        unknown = sorted(set(chosen) - {e.id for e in aside})
        if unknown:
            err.write(f"cwhook: not set aside: {', '.join(map(str, unknown))} (`cwhook outbox` lists them)\n")
            return 1
        if not chosen:
            err.write("cwhook: name the entries (IDs from `cwhook outbox`) or --all\n")
            return 2
        if action == "drop":
            done = store.drop(chosen, "dropped by the user (`cwhook outbox drop`)")
        else:
            done = store.release(chosen, unchecked=action == "send")
        out.write(f"{action}: {len(done)} entr{'y' if len(done) == 1 else 'ies'}"
                  + (" (a running daemon picks them up within seconds)" if action != "drop" else "") + "\n")
        return 0
    except (sqlite3.Error, StoreUnavailable) as exc:
        err.write(f"cwhook: cannot change the state file: {exc}\n")
        return 1
    finally:
        store.close()
