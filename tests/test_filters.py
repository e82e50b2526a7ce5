from __future__ import annotations

from dataclasses import replace

import pytest

from cwhook.config.schema import WebhookConfig
from cwhook.ingest.filters import check
from cwhook.kernel.event import Event

PLEX = Event(source="plex", action="start", kind="movie", title="x", user_name="Dr. Alice O'Neil",
             user_id="31646104", user_uuid="abcDEF123", server_id="Srv-UUID-1")


@pytest.mark.parametrize(("whitelist", "allowed"), [
    ((), True),
    (("dralice oneil",), True),
    (("DR ALICE O NEIL",), True),
    (("alice",), False),
    (("id:31646104",), True),
    (("id:1",), False),
    (("uuid:ABCdef123",), True),
    (("uuid:zzz",), False),
    (("bob", "id:31646104"), True),
])
def test_plex_username_whitelist(whitelist: tuple[str, ...], allowed: bool) -> None:
    result = check(PLEX, WebhookConfig(username_whitelist=whitelist))
    assert (result is None) == allowed
    if not allowed:
        assert result is not None and result.reason == "user_not_allowed"


def test_plex_server_whitelist_and_ratings_switch() -> None:
    assert check(PLEX, WebhookConfig(server_uuid_whitelist=("srv-uuid-1",))) is None
    refused = check(PLEX, WebhookConfig(server_uuid_whitelist=("other",)))
    assert refused is not None and refused.reason == "server_not_allowed"
    rate = replace(PLEX, action="rate", rating=5)
    refused = check(rate, WebhookConfig(ratings=False))
    assert refused is not None and refused.reason == "ratings_disabled"
    assert check(rate, WebhookConfig(ratings=True)) is None


@pytest.mark.parametrize("source", ["jellyfin", "emby"])
def test_mediabrowser_whitelist_case_insensitive(source: str) -> None:
    ev = replace(PLEX, source=source, user_name="Alice")
    assert check(ev, WebhookConfig(username_whitelist=("alice",))) is None
    assert check(ev, WebhookConfig(username_whitelist=("ALICE ",))) is None
    refused = check(ev, WebhookConfig(username_whitelist=("bob",)))
    assert refused is not None and refused.reason == "user_not_allowed"
    assert check(replace(ev, user_name=None), WebhookConfig(username_whitelist=("bob",))) is not None
