"""Where an account's Trakt token pair is kept on disk: the token journal and the config file.

A refreshed pair is appended to the token journal in the state dir first (fsynced:
Trakt has retired the old refresh token, and a crash a moment later must not lock
the user out), then written to the YAML file in place, comments kept. At start a
newer pair in the journal (a crash before the YAML rewrite) is what the account
uses. Which pair is in use, and the refresh call itself, are cwhook/trakt/auth.py's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from cwhook.config.file import ConfigFiles
from cwhook.config.schema import DEFAULT_ACCOUNT, AccountConfig
from cwhook.kernel import logs
from cwhook.state.tokenjournal import Pair, TokenJournal

log = logs.get("cwhook.trakt.auth")  # the events keep the logger they always had

DEFAULT_KEY = AccountConfig(DEFAULT_ACCOUNT).key


def pair_changes(pair: Pair, key: tuple[str, ...] = DEFAULT_KEY) -> dict[tuple[str, ...], str | int]:
    """The YAML changes that store a pair under ``key`` (``trakt`` or ``trakt.accounts.NAME``)."""
    return {(*key, "access_token"): pair.access_token, (*key, "refresh_token"): pair.refresh_token,
            (*key, "expires_at"): pair.expires_at}


class TokenFiles:
    """One account's pair in the token journal (if there is one) and under its keys in the file."""

    def __init__(self, config_path: Path, account: str, journal: TokenJournal | None,
                 config_files: ConfigFiles | None = None) -> None:
        self.config_path = config_path
        self.config_files = config_files if config_files is not None else ConfigFiles()  # the daemon's own
        self.account = account
        self.journal = journal
        self.key = AccountConfig(account).key  # where its tokens live in the YAML file

    @property
    def _who(self) -> dict[str, str]:
        return {} if self.account == DEFAULT_ACCOUNT else {"account": self.account}

    def journal_newest(self) -> Pair | None:
        """The newest pair the journal holds for the account (None when unreadable or none)."""
        if self.journal is None:
            return None
        try:
            return self.journal.newest(self.account)
        except OSError as exc:
            log.error("token_journal_unreadable", error=str(exc), path=str(self.journal.path))
            return None

    async def record(self, pair: Pair) -> None:
        """Append a refreshed pair to the journal before anything else is done with it."""
        if self.journal is None:
            return
        try:
            # The write itself right here (microseconds, page cache): no thread hop
            # between Trakt's answer and the pair being safe from a SIGKILL.
            self.journal.append(self.account, pair, fsync=False)
            await asyncio.to_thread(self.journal.sync)
        except OSError as exc:
            log.error("token_journal_write_failed", error=str(exc), path=str(self.journal.path))

    def write(self, pair: Pair) -> str | None:
        """Write the pair to the config file; None when saved, else why it is not."""
        try:
            self.config_files.update_file(self.config_path, pair_changes(pair, self.key))
        except Exception as exc:
            log.error("trakt_tokens_not_saved", error=str(exc), path=str(self.config_path), **self._who,
                      note="the new pair is used from memory; retrying every minute")
            return str(exc)
        log.info("trakt_tokens_saved", path=str(self.config_path), **self._who)
        return None
