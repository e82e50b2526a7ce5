"""The 1 POST/s pacing counts from when a POST left, not from when it was let go (docs/rules.md)."""

from __future__ import annotations

import time

from cwhook.trakt.client import TraktClient
from tests.faketrakt import FakeTrakt


async def test_a_stall_before_a_post_leaves_does_not_bring_the_next_one_closer(fake_trakt: FakeTrakt) -> None:
    """A pause of the event loop between the pacing and the send (a garbage collection took
    70 ms in the daemon) used to let the next POST reach Trakt less than a second later: 429."""
    fake_trakt.add_movies(2)
    access, _, _ = fake_trakt.issue_tokens()
    client = TraktClient(fake_trakt.url, lambda: ("test-client-id", access))
    real_headers = client.headers
    stalled: list[bool] = []

    def stall() -> dict[str, str]:  # asked once the POST is paced, before it is written
        if not stalled:
            stalled.append(True)
            time.sleep(0.3)  # blocks the loop, as a collection does
        return real_headers()

    client.headers = stall  # type: ignore[method-assign]
    for imdb in ("tt9000000", "tt9000001"):
        await client.request("POST", "/scrobble/stop", {"movie": {"ids": {"imdb": imdb}}, "progress": 95})
    await client.close()
    posts = fake_trakt.posts("/scrobble/stop")
    assert [c.status for c in posts] == [201, 201]
    assert posts[1].at - posts[0].at >= 1.0  # the fake answers 429 below a second
