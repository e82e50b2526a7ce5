"""The commands the program tells a person to run, written so that they work as printed.

A hint names the config file (``-c PATH``) unless it is the default ``./cwhook.yml``:
the daemon under systemd finds its file through ``CWHOOK_CONFIG``, which the person's
shell does not have, so a bare ``cwhook auth`` would read another file, or none.
"""

from __future__ import annotations

import shlex
from pathlib import Path

DEFAULT_PATH = Path("cwhook.yml")


def command(args: str, config_path: Path | str | None = None) -> str:
    """``cwhook ARGS -c PATH`` (no ``-c`` for the default file or when no path is known)."""
    text = f"cwhook {args}".rstrip()
    if config_path is None or Path(config_path) == DEFAULT_PATH:
        return text
    return f"{text} -c {shlex.quote(str(config_path))}"


def auth(account: str, config_path: Path | str | None = None) -> str:
    """The login command of a Trakt account (``--account`` for all but ``default``)."""
    return command("auth" if account == "default" else f"auth --account {account}", config_path)
