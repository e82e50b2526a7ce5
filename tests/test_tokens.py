"""The token journal and the rules for which Trakt pair is in use (docs/durability.md, Trakt tokens)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

import cwhook.trakt.auth
import cwhook.trakt.tokenfiles
from cwhook.config.schema import TraktConfig, load_config
from cwhook.state.tokenjournal import COMPACT_AT, Pair, TokenJournal
from cwhook.trakt.auth import TraktAuth
from tests.faketrakt import FakeTrakt, Fault

CONFIG = """# my trakt
trakt:
  api_url: {url}
  oauth_url: {url}
  client_id: test-client-id
  client_secret: test-secret
  access_token: "{access}"     # keep this comment
  refresh_token: "{refresh}"
  expires_at: {expires}
"""


def test_journal_keeps_the_newest_pair_per_account_and_skips_a_torn_line(tmp_path: Path) -> None:
    journal = TokenJournal(tmp_path)
    assert journal.newest("default") is None
    journal.append("default", Pair("a1", "r1", 100))
    journal.append("anna", Pair("a9", "r9", 900))
    journal.append("default", Pair("a2", "r2", 200))
    with open(journal.path, "ab") as fh:
        fh.write(b'{"account": "default", "access_token": "a3", "refr')  # killed mid-write
    assert journal.newest("default") == Pair("a2", "r2", 200)
    assert journal.newest("anna") == Pair("a9", "r9", 900)
    assert journal.path.stat().st_mode & 0o777 == 0o600


def test_journal_compacts_itself(tmp_path: Path) -> None:
    journal = TokenJournal(tmp_path)
    for i in range(COMPACT_AT // 100 + 10):
        journal.append("default", Pair(f"a{i}" * 5, f"r{i}" * 5, i))
    assert journal.path.stat().st_size < COMPACT_AT
    assert journal.newest("default") == Pair(f"a{i}" * 5, f"r{i}" * 5, i)


def trakt(url: str, access: str, refresh: str, expires: int) -> TraktConfig:
    return TraktConfig(api_url=url, oauth_url=url, client_id="test-client-id", client_secret="test-secret",
                       access_token=access, refresh_token=refresh, expires_at=expires)


def write(path: Path, url: str, access: str, refresh: str, expires: int) -> None:
    path.write_text(CONFIG.format(url=url, access=access, refresh=refresh, expires=expires))


def test_start_adopts_a_newer_pair_from_the_journal_and_updates_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    write(path, "http://127.0.0.1:9", "old-a", "old-r", 1000)
    journal = TokenJournal(tmp_path)
    journal.append("default", Pair("new-a", "new-r", 2000))
    auth = TraktAuth(path, load_config(path).trakt, journal=journal)
    assert auth.adopt_journal()
    assert auth.tokens()[1] == "new-a" and auth.unsaved is None
    cfg = load_config(path).trakt
    assert (cfg.access_token, cfg.refresh_token, cfg.expires_at) == ("new-a", "new-r", 2000)
    assert "# keep this comment" in path.read_text()
    # an older journal entry never wins over the file
    journal.append("default", Pair("older-a", "older-r", 1500))
    auth = TraktAuth(path, load_config(path).trakt, journal=journal)
    assert not auth.adopt_journal() and auth.tokens()[1] == "new-a"


async def test_refreshed_pair_that_cannot_be_saved_survives_reloads_and_is_saved_later(
        tmp_path: Path, fake_trakt: FakeTrakt, monkeypatch: pytest.MonkeyPatch) -> None:
    access, refresh, expires = fake_trakt.issue_tokens()
    path = tmp_path / "c.yml"
    write(path, fake_trakt.url, access, refresh, expires)
    journal = TokenJournal(tmp_path / "state")
    (tmp_path / "state").mkdir()
    auth = TraktAuth(path, load_config(path).trakt, journal=journal)
    real = auth.files.config_files.update_file

    def read_only(*args: Any) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(auth.files.config_files, "update_file", read_only)
    assert await auth.refresh(access)
    new_access = auth.tokens()[1]
    assert new_access != access and auth.unsaved is not None
    assert journal.newest("default") is not None and journal.newest("default").access_token == new_access
    # a reload (SIGHUP, or the file touched) reads the stale pair: it must not replace the live one
    auth.update_from_config(load_config(path).trakt)
    assert auth.tokens()[1] == new_access and auth.unsaved is not None
    # the directory is writable again: the minute's retry saves it
    monkeypatch.setattr(auth.files.config_files, "update_file", real)
    assert await auth.save_pending()
    assert auth.unsaved is None and load_config(path).trakt.access_token == new_access


def test_reload_takes_a_newer_pair_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    auth = TraktAuth(path, trakt("http://x", "a1", "r1", 1000))
    auth.needs_auth = "token refresh refused (400): run `cwhook auth`"
    auth.update_from_config(trakt("http://x", "a2", "r2", 5000))  # `cwhook auth` wrote a new pair
    assert auth.tokens()[1] == "a2" and auth.needs_auth is None
    auth.update_from_config(trakt("http://x", "a0", "r0", 10))  # an old pair pasted back by hand
    assert auth.tokens()[1] == "a2" and auth.unsaved is not None
    auth.update_from_config(trakt("http://x", "a2", "r2", 5000))  # the file caught up
    assert auth.unsaved is None
    # a file caught half-written (or tokens cleared by hand) never logs the running daemon out:
    # an empty pair is older than the one in use, which is kept and written back
    auth.update_from_config(trakt("http://x", "", "", 0))
    assert auth.tokens()[1] == "a2" and auth.authorized and auth.unsaved is not None


@pytest.mark.parametrize(("fault", "dead"), [
    (Fault("/oauth/token", "status", status=429, headers={"Retry-After": "1"}), False),
    (Fault("/oauth/token", "status", status=408), False),
    (Fault("/oauth/token", "status", status=423), False),
    (Fault("/oauth/token", "status", status=503), False),
    (Fault("/oauth/token", "html", status=400), False),  # a proxy's page, not Trakt's refusal
    (Fault("/oauth/token", "html", status=200), False),
    (Fault("/oauth/token", "redirect_other"), False),
    (None, True),  # 400 invalid_grant: the refresh token is dead
])
async def test_only_a_dead_refresh_token_needs_auth(tmp_path: Path, fake_trakt: FakeTrakt,
                                                    fault: Fault | None, dead: bool,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cwhook.trakt.auth, "RETRY_FIRST", 0.2)
    access, refresh, expires = fake_trakt.issue_tokens(lifetime=-10)
    if fault is None:
        fake_trakt.refresh_tokens.clear()
    else:
        fake_trakt.faults = [fault]
    auth = TraktAuth(tmp_path / "c.yml", trakt(fake_trakt.url, access, refresh, expires))
    write(auth.config_path, fake_trakt.url, access, refresh, expires)
    recovered: list[bool] = []
    auth.on_refreshed = lambda: recovered.append(True)
    assert await auth.refresh(access) is False
    if dead:
        assert auth.needs_auth and "invalid_grant" in auth.needs_auth and auth.refresh_retrying is None
        return
    assert auth.needs_auth is None and auth.refresh_retrying is not None
    assert await auth.refresh(access) is False  # within the back-off: Trakt is not asked again
    assert len(fake_trakt.posts("/oauth/token")) == 1
    deadline = time.monotonic() + 5
    while not recovered and time.monotonic() < deadline:  # the scheduled retry succeeds
        await asyncio.sleep(0.05)
    assert recovered and auth.tokens()[1] != access and auth.refresh_retrying is None
    assert len(fake_trakt.posts("/oauth/token")) == 2
    auth.close()


async def test_refused_app_credentials_need_auth(tmp_path: Path, fake_trakt: FakeTrakt) -> None:
    access, refresh, expires = fake_trakt.issue_tokens(lifetime=-10)
    config = trakt(fake_trakt.url, access, refresh, expires)
    config = TraktConfig(**{**config.__dict__, "client_secret": "wrong"})
    auth = TraktAuth(tmp_path / "c.yml", config)
    assert await auth.refresh(access) is False
    assert auth.needs_auth and "401" in auth.needs_auth and "client_secret" in auth.needs_auth
