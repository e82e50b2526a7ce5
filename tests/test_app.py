"""The HTTP shell through aiohttp's test client: statuses, bodies, limits, fuzzing."""

from __future__ import annotations

import asyncio
import io
import json
import random
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cwhook.config.schema import parse_config
from cwhook.ingest.app import Runtime, make_app
from cwhook.kernel import logs
from cwhook.kernel.event import Event
from tests.builders import PATHS, multipart, runtime
from tests.conftest import FIXTURES, TOKENS, config_text, fixture_bytes

SAMPLES = [
    ("plex", "plex_media.scrobble_movie.json", "scrobble"),
    ("plex", "plex_media.scrobble_episode.json", "scrobble"),
    ("plex", "plex_media.pause_episode_legacy-tvdb-agent.json", "pause"),
    ("plex", "plex_media.stop_movie_legacy-imdb-agent.json", "stop"),
    ("jellyfin", "jellyfin_PlaybackStop_movie.json", "stop"),
    ("jellyfin", "reconstructed/jellyfin_PlaybackProgress_episode_paused.RECONSTRUCTED.json", "progress"),
    ("jellyfin", "reconstructed/jellyfin_template_scrobbler.rendered_PlaybackStop_episode.RECONSTRUCTED.json",
     "stop"),
    ("emby", "emby_playback.start_episode.json", "start"),
    ("emby", "emby_playback.stop_movie.json", "stop"),
    ("emby", "reconstructed/emby_playback.pause_episode.RECONSTRUCTED.json", "pause"),
]


@pytest.mark.parametrize(("server", "name", "action"), SAMPLES)
async def test_samples_are_queued(aiohttp_client: Any, server: str, name: str, action: str) -> None:
    rt = runtime()
    client = await aiohttp_client(make_app(rt))
    ctype = "text/plain; charset=utf-8" if server == "jellyfin" else "application/json"
    resp = await client.post(f"{PATHS[server]}?{TOKENS[server]}", data=fixture_bytes(name),
                             headers={"Content-Type": ctype})
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert body["status"] == "queued" and body["event"]["action"] == action
    assert body["event"]["source"] == server
    event = rt.queue.get_nowait()
    assert isinstance(event, Event) and event.action == action
    assert rt.counters.received == 1 and rt.counters.queued == 1


async def test_plex_multipart_with_thumbnail(aiohttp_client: Any) -> None:
    rt = runtime()
    client = await aiohttp_client(make_app(rt))
    thumb = bytes(random.Random(1).getrandbits(8) for _ in range(300_000))
    body, ctype = multipart([("payload", fixture_bytes("plex_media.scrobble_episode.json"), None),
                             ("thumb", thumb, "thumb.jpg")])
    resp = await client.post(f"/webhook/plextrakt?{TOKENS['plex']}", data=body,
                             headers={"Content-Type": ctype})
    assert resp.status == 202
    assert (await resp.json())["event"]["show"]["title"] == "范马刃牙"


def http_file_body(name: str) -> tuple[bytes, str]:
    """The body and Content-Type of a reconstructed .http capture (LF → CRLF)."""
    text = (FIXTURES / "reconstructed" / name).read_text()
    head, _, body = text.partition("\n\n")
    ctype = next(line.split(": ", 1)[1] for line in head.splitlines() if line.startswith("Content-Type"))
    return body.replace("\n", "\r\n").encode(), ctype


async def test_reconstructed_multipart_captures(aiohttp_client: Any) -> None:
    rt = runtime()
    client = await aiohttp_client(make_app(rt))
    body, ctype = http_file_body("emby_multipart_request.RECONSTRUCTED.http")
    resp = await client.post(f"/webhook/embytrakt?{TOKENS['emby']}", data=body,
                             headers={"Content-Type": ctype})
    assert resp.status == 202
    assert (await resp.json())["event"]["progress"] == 100.0
    body, ctype = http_file_body("plex_multipart_request.RECONSTRUCTED.http")
    resp = await client.post(f"/webhook/plextrakt?{TOKENS['plex']}", data=body,
                             headers={"Content-Type": ctype})
    assert resp.status == 202
    assert (await resp.json())["event"]["action"] == "scrobble"


async def test_tokens(aiohttp_client: Any) -> None:
    rt = runtime()
    client = await aiohttp_client(make_app(rt))
    data = fixture_bytes("plex_media.scrobble_movie.json")
    for query, status in [(TOKENS["plex"], 202), (f"token={TOKENS['plex']}", 202), ("", 401),
                          ("wrong", 401), (TOKENS["emby"], 401), (TOKENS["plex"] + "x", 401),
                          (f"token={TOKENS['plex']}&x=1", 202)]:
        resp = await client.post(f"/webhook/plextrakt?{query}", data=data)
        assert resp.status == status, query
        if status == 401:
            assert await resp.json() == {"error": "invalid_token"}


async def test_disabled_server(aiohttp_client: Any) -> None:
    rt = runtime()
    text = config_text(8787, Path("/tmp/s")).replace("  emby:\n", "  emby:\n    enabled: false\n")
    rt.config = parse_config(text, Path("/tmp/c.yml"))
    client = await aiohttp_client(make_app(rt))
    resp = await client.post(f"/webhook/embytrakt?{TOKENS['emby']}", data=b"{}")
    assert resp.status == 404 and await resp.json() == {"error": "disabled"}


async def test_too_large(aiohttp_client: Any) -> None:
    rt = runtime(max_body=4096)
    client = await aiohttp_client(make_app(rt))
    url = f"/webhook/jellyfintrakt?{TOKENS['jellyfin']}"
    # The answer names the limit and the key that raises it (docs/troubleshooting.md).
    resp = await client.post(url, data=b"{" + b" " * 5000 + b"}")
    assert resp.status == 413 and await resp.json() == {
        "error": "too_large", "detail": "the body may be at most 4096 bytes (server.max_body_bytes)"}

    async def chunks() -> Any:  # no Content-Length: counted while streaming
        for _ in range(10):
            yield b" " * 1000

    resp = await client.post(url, data=chunks())
    assert resp.status == 413
    # a thumbnail before the payload part still counts
    body, ctype = multipart([("thumb", b"x" * 5000, "thumb.jpg"),
                             ("payload", fixture_bytes("plex_media.scrobble_movie.json"), None)])
    resp = await client.post(f"/webhook/plextrakt?{TOKENS['plex']}", data=body,
                             headers={"Content-Type": ctype})
    assert resp.status == 413 and await resp.json() == {
        "error": "too_large", "detail": "a multipart body may be at most 4096 bytes (server.max_body_bytes)"}


@pytest.mark.parametrize(("server", "body", "ctype", "detail"), [
    ("plex", b"not json", "application/json", "not JSON"),
    ("plex", b"--b\r\nbroken", "multipart/form-data; boundary=b", "broken multipart"),
    ("plex", b"--b\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n--b--\r\n",
     "multipart/form-data; boundary=b", "no 'payload' part"),
    ("plex", b"x", "multipart/form-data", "broken multipart"),
    ("emby", b"[]", "application/json", "not an object"),
    ("jellyfin", b"\xff\xfe\x00", "text/plain", "not UTF-8"),
    ("jellyfin", b"", "text/plain", "empty body"),
])
async def test_bad_payloads(aiohttp_client: Any, server: str, body: bytes, ctype: str, detail: str) -> None:
    rt = runtime()
    client = await aiohttp_client(make_app(rt))
    resp = await client.post(f"{PATHS[server]}?{TOKENS[server]}", data=body, headers={"Content-Type": ctype})
    assert resp.status == 400
    answer = await resp.json()
    assert answer["error"] == "bad_payload" and detail in answer["detail"]
    assert rt.queue.empty()


async def test_ignored_with_reason(aiohttp_client: Any) -> None:
    rt = runtime(extra="    username_whitelist: [someone-else]\n")
    client = await aiohttp_client(make_app(rt))
    resp = await client.post(f"/webhook/plextrakt?{TOKENS['plex']}",
                             data=fixture_bytes("plex_media.scrobble_movie.json"))
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ignored" and body["reason"] == "user_not_allowed"
    resp = await client.post(f"/webhook/plextrakt?{TOKENS['plex']}",
                             data=fixture_bytes("plex_media.play_clip_trailer.json"))
    assert (await resp.json())["reason"] == "media_type_not_supported"
    assert rt.counters.ignored == 2 and rt.queue.empty()


async def test_queue_full_is_503_with_retry_after(aiohttp_client: Any) -> None:
    rt = runtime(queue_size=1)
    client = await aiohttp_client(make_app(rt))
    url = f"/webhook/plextrakt?{TOKENS['plex']}"
    data = fixture_bytes("plex_media.scrobble_movie.json")
    assert (await client.post(url, data=data)).status == 202
    resp = await client.post(url, data=data)
    assert resp.status == 503 and resp.headers["Retry-After"] == "5"
    assert await resp.json() == {"error": "busy"}


async def test_healthz_and_unknown_routes(aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_app(runtime()))
    assert await (await client.get("/healthz")).json() == {"status": "ok"}
    resp = await client.get("/nope")
    assert resp.status == 404 and await resp.json() == {"error": "not_found"}
    resp = await client.get(f"/webhook/plextrakt?{TOKENS['plex']}")
    assert resp.status == 405 and (await resp.json())["error"] == "method_not_allowed"


async def test_token_never_logged(aiohttp_client: Any) -> None:
    sink = io.StringIO()
    logs.configure("debug", "json", sink)
    try:
        client = await aiohttp_client(make_app(runtime()))
        for server in PATHS:
            await client.post(f"{PATHS[server]}?{TOKENS[server]}", data=b"garbage")
            await client.post(f"{PATHS[server]}?token={TOKENS[server]}", data=b"{}")
        await client.post("/webhook/plextrakt?wrong-token-value", data=b"{}")
    finally:
        logs.configure("info", "json")
    text = sink.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    requests = [line for line in lines if line["event"] == "request"]
    assert len(requests) == 2 * len(PATHS) + 1
    assert all(r["path"].endswith("?<redacted>") for r in requests)
    for token in [*TOKENS.values(), "wrong-token-value"]:
        assert token not in text


# --- fuzzing through the real app on a real socket ---------------------------------------


class ThreadServer:
    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.port = 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            runner = web.AppRunner(self.app, access_log=None)
            self.loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            self.loop.run_forever()
            self.loop.run_until_complete(runner.cleanup())

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        ready.wait(5)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[tuple[ThreadServer, Runtime]]:
    rt = runtime(queue_size=100000)
    server = ThreadServer(make_app(rt))
    yield server, rt
    server.stop()


def post_raw(port: int, path: str, body: bytes, ctype: str) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST",
                                 headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            json.loads(resp.read())
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        json.loads(exc.read())  # every answer is JSON
        return int(exc.code)


ALL_SAMPLES = sorted(p for p in FIXTURES.rglob("*.json") if p.parent.name != "trakt")


def mutate(data: bytes, rnd: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rnd.randint(1, 8)):
        op = rnd.random()
        pos = rnd.randrange(len(buf) + 1)
        if op < 0.4 and buf:
            buf[min(pos, len(buf) - 1)] = rnd.randrange(256)
        elif op < 0.7:
            buf[pos:pos] = bytes(rnd.choice([b"{", b"}", b"[", b"\"", b":", b",", b"null", b"\xff", b"9" * 30]))
        else:
            del buf[pos:pos + rnd.randint(1, 50)]
    return bytes(buf)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    server=st.sampled_from(list(PATHS)),
    seed=st.integers(0, 2**32),
    sample=st.sampled_from(ALL_SAMPLES),
    ctype=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                           "multipart/form-data; boundary=zz", "", "application/octet-stream"]),
)
def test_fuzz_mutated_samples_never_5xx(fuzz_server: tuple[ThreadServer, Runtime], server: str, seed: int,
                                        sample: Path, ctype: str) -> None:
    srv, _ = fuzz_server
    body = mutate(sample.read_bytes(), random.Random(seed))
    status = post_raw(srv.port, f"{PATHS[server]}?{TOKENS[server]}", body, ctype)
    assert status in (200, 202, 400), status


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children,
                                                                        max_size=5),
    max_leaves=30,
)
KEYS = ["event", "Event", "NotificationType", "Metadata", "Item", "type", "ItemType", "Type",
        "PlaybackInfo", "Guid", "guid", "ProviderIds", "RunTimeTicks", "viewOffset", "duration"]


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(server=st.sampled_from(list(PATHS)),
       doc=st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), json_values, max_size=8),
       event=st.sampled_from(["media.play", "media.scrobble", "playback.stop", "PlaybackStart",
                              "PlaybackProgress", "x"]))
def test_fuzz_random_documents_never_5xx(fuzz_server: tuple[ThreadServer, Runtime], server: str,
                                         doc: dict[str, Any], event: str) -> None:
    srv, _ = fuzz_server
    doc.setdefault({"plex": "event", "emby": "Event", "jellyfin": "NotificationType", "tautulli": "action"}[server],
                   event)
    status = post_raw(srv.port, f"{PATHS[server]}?{TOKENS[server]}", json.dumps(doc).encode(),
                      "application/json")
    assert status in (200, 202, 400), status
