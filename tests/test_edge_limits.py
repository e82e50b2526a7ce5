"""Timeouts, connection and memory limits of the edge, on real sockets (in-process server).

The timeouts are shortened through ``edge.Limits`` so that each test takes about a second;
test_edge_process.py checks the real defaults and the real `cwhook run` process.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import io
import json
import resource
import time
from dataclasses import replace
from typing import Any

import pytest

from cwhook.ingest import edge
from cwhook.kernel import logs
from tests import builders, fuzzkit
from tests.conftest import TOKENS, fixture_bytes

FAST = edge.Limits(idle_timeout=0.8, header_timeout=0.5, body_stall=0.6, body_deadline=3.0)
PLEX = f"/webhook/plextrakt?{TOKENS['plex']}"
SAMPLE = fixture_bytes("plex_media.scrobble_movie.json")


def post(body: bytes, path: str = PLEX, ctype: str = "application/json", length: int | None = None,
         extra: str = "") -> bytes:
    n = len(body) if length is None else length
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {ctype}\r\nContent-Length: {n}\r\n{extra}\r\n"
            .encode() + body)


GET_HEALTH = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


async def until_closed(reader: asyncio.StreamReader, limit: float = 10) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    started = time.monotonic()
    data = b""
    try:
        async with asyncio.timeout(limit):
            while chunk := await reader.read(65536):
                data += chunk
    except (ConnectionError, TimeoutError):
        pass
    return data, time.monotonic() - started


def answer_of(data: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"application/json" in head, data[:300]
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.fixture
def sink() -> Any:
    out = io.StringIO()
    logs.configure("debug", "json", out)
    yield out
    logs.configure("info", "json")


def events(sink: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in sink.getvalue().splitlines() if line.startswith("{")]


# --- timeouts ------------------------------------------------------------------------------------


async def test_headers_that_do_not_arrive_in_time_get_408_and_a_close(sink: io.StringIO) -> None:
    async with fuzzkit.served(FAST) as (port, _):
        silent = await asyncio.open_connection("127.0.0.1", port)
        partial = await asyncio.open_connection("127.0.0.1", port)
        partial[1].write(b"POST " + PLEX.encode() + b" HTTP/1.1\r\nHost: t\r\n")
        results = await asyncio.gather(until_closed(silent[0]), until_closed(partial[0]))
        for data, took in results:
            assert 0.4 < took < 2.0
            assert answer_of(data) == (408, {"error": "timeout", "detail": "the request headers took too long"})
    assert TOKENS["plex"] not in sink.getvalue()
    # the partial request is logged; the silent connection only counted, in one summary line
    assert [e["outcome"] for e in events(sink) if e.get("status") == 408] == ["header_timeout"]
    assert [(e["closed"], e["level"]) for e in events(sink) if e["event"] == "silent_connections"] == [(1, "info")]


async def test_the_next_request_on_a_kept_alive_connection_has_its_headers_timed_too() -> None:
    """A request that arrives whole sets no header timer; the next one on the same connection,
    begun and not finished, is timed from its first bytes (408), well before the idle timeout."""
    async with fuzzkit.served(replace(FAST, idle_timeout=10)) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(SAMPLE))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 202"), head
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        await asyncio.sleep(0.7)  # longer than header_timeout: only the next request's bytes count
        writer.write(b"POST " + PLEX.encode() + b" HTTP/1.1\r\nHost: t\r\n")
        data, took = await until_closed(reader)
        assert 0.4 < took < 2.0
        assert answer_of(data) == (408, {"error": "timeout", "detail": "the request headers took too long"})


async def test_a_body_that_ends_in_a_later_read_starts_no_header_timer(sink: io.StringIO) -> None:
    """The read that completes a body leaves the connection between requests, but begins none: no
    408 follows the answer (found by the outsider test: a Plex thumbnail larger than one read)."""
    async with fuzzkit.served(replace(FAST, idle_timeout=3)) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = post(SAMPLE)
        writer.write(request[:-20])
        await asyncio.sleep(0.3)
        writer.write(request[-20:])
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 202"), head
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        with pytest.raises(TimeoutError):  # header_timeout (0.5 s) passes three times over: nothing comes
            await asyncio.wait_for(reader.read(1), 1.5)
        writer.write(post(SAMPLE))  # and the connection still takes the next request
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 202")
        writer.close()
    assert [e for e in events(sink) if e.get("status") == 408] == []


async def test_silent_connections_are_summed_up_not_logged_one_by_one(sink: io.StringIO) -> None:
    async with fuzzkit.served(FAST) as (port, rt):
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(60)]
        results = await asyncio.gather(*(until_closed(r) for r, _ in conns))
        assert all(answer_of(data)[0] == 408 for data, _ in results)
        assert rt.counters.connections["silent"] == 60
        found = events(sink)
        assert [e for e in found if e.get("status") == 408] == []
        # the summary comes a few seconds after the first one, or at shutdown
        assert [e for e in found if e["event"] == "silent_connections"] == []
    assert [e["closed"] for e in events(sink) if e["event"] == "silent_connections"] == [60]


async def test_slowloris_connections_are_closed() -> None:
    async with fuzzkit.served(FAST) as (port, _):
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(50)]
        line = b"POST " + PLEX.encode() + b" HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 100

        async def trickle(writer: asyncio.StreamWriter) -> None:
            for byte in line:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)

        feeders = [asyncio.ensure_future(trickle(w)) for _, w in conns]
        results = await asyncio.gather(*(until_closed(r, 5) for r, _ in conns))
        for f in feeders:
            f.cancel()
        assert all(took < 2.0 for _, took in results)
        assert all(answer_of(data)[0] == 408 for data, _ in results)


async def test_idle_keep_alive_connection_closes_after_the_idle_timeout() -> None:
    async with fuzzkit.served(FAST) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET_HEALTH)
        first = await fuzzkit.read_answer(reader)
        assert first.status == 200
        writer.write(GET_HEALTH)  # still alive before the timeout
        assert (await fuzzkit.read_answer(reader)).status == 200
        data, took = await until_closed(reader)
        assert data == b"" and 0.6 < took < 2.0


async def test_a_stalled_body_is_closed_and_a_moving_one_is_not(sink: io.StringIO) -> None:
    async with fuzzkit.served(FAST) as (port, _):
        stalled = await asyncio.open_connection("127.0.0.1", port)
        stalled[1].write(post(SAMPLE[:100], length=len(SAMPLE)))
        moving = await asyncio.open_connection("127.0.0.1", port)
        moving[1].write(post(SAMPLE[:100], length=len(SAMPLE)))

        async def trickle() -> None:
            step = len(SAMPLE) // 6 + 1
            for i in range(100, len(SAMPLE), step):
                await asyncio.sleep(0.3)  # under the 0.6 s stall, 3 s deadline overall
                moving[1].write(SAMPLE[i:i + step])

        feeder = asyncio.ensure_future(trickle())
        data, took = await until_closed(stalled[0])
        assert data == b"" and 0.5 < took < 2.0
        answer = await fuzzkit.read_answer(moving[0])
        await feeder
        assert answer.status == 202
    assert [e["event"] for e in events(sink) if e["event"] == "body_stalled"] == ["body_stalled"]


async def test_a_body_that_takes_longer_than_the_deadline_gets_408() -> None:
    limits = replace(FAST, body_deadline=1.0)
    async with fuzzkit.served(limits) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(b"{", length=100000))

        async def trickle() -> None:
            while True:
                await asyncio.sleep(0.2)
                writer.write(b" " * 10)

        feeder = asyncio.ensure_future(trickle())
        data, took = await until_closed(reader, 5)
        feeder.cancel()
        assert answer_of(data) == (408, {"error": "timeout", "detail": "the request body took too long"})
        assert 0.9 < took < 2.5


# --- memory -----------------------------------------------------------------------------------------


async def test_raw_bodies_over_one_mebibyte_are_413() -> None:
    async with fuzzkit.served(FAST) as (port, _):
        big = b"{" + b" " * (1 << 20) + b"}"
        for request in (post(big), post(b"{}", length=len(big)),
                        post(big, path=f"/webhook/jellyfintrakt?{TOKENS['jellyfin']}", ctype="text/plain")):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            answer = await fuzzkit.read_answer(reader)
            assert (answer.status, json.loads(answer.body)) == (413, {
                "error": "too_large", "detail": f"a JSON or form body may be at most {1 << 20} bytes (a fixed limit)"})
            writer.close()
        # exactly the limit is fine (and not JSON here: 400)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(b"x" * (1 << 20)))
        assert (await fuzzkit.read_answer(reader)).status == 400


async def test_chunked_raw_body_over_the_limit_is_413() -> None:
    async with fuzzkit.served(FAST) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST {PLEX} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
        for _ in range(17):
            writer.write(chunk)
        answer = await fuzzkit.read_answer(reader)
        assert answer.status == 413


def multipart_body(payload: bytes, thumb: bytes, payload_first: bool = True) -> tuple[bytes, str]:
    parts: list[tuple[str, bytes, str | None]] = [("payload", payload, None), ("thumb", thumb, "t.jpg")]
    return builders.multipart(parts if payload_first else parts[::-1], "BB", typed=False)


async def test_multipart_thumbnail_is_skipped_and_a_huge_json_part_is_413() -> None:
    async with fuzzkit.served(FAST) as (port, _):
        body, ctype = multipart_body(SAMPLE, b"\xff" * (9 << 20))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(body, ctype=ctype))
        assert (await fuzzkit.read_answer(reader)).status == 202
        writer.close()
        body, ctype = multipart_body(SAMPLE, b"\xff" * (3 << 20), payload_first=False)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(body, ctype=ctype))
        assert (await fuzzkit.read_answer(reader)).status == 202
        writer.close()
        body, ctype = multipart_body(b"{" + b" " * (2 << 20) + b"}", b"")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(body, ctype=ctype))
        answer = await fuzzkit.read_answer(reader)
        assert (answer.status, json.loads(answer.body)) == (413, {"error": "too_large", "detail": (
            f"the payload part of a multipart body may be at most {1 << 20} bytes (a fixed limit)")})
        writer.close()


async def test_over_the_budget_the_slowest_body_is_dropped_not_the_newcomer(sink: io.StringIO) -> None:
    limits = replace(FAST, body_budget=300_000, slow_body_grace=0.3, body_stall=5, body_deadline=8)
    async with fuzzkit.served(limits) as (port, rt):
        # an upload holds 250 kB of the 300 kB budget (aiohttp's buffer and the app's share) and
        # is not finished
        holder_r, holder_w = await asyncio.open_connection("127.0.0.1", port)
        holder_w.write(post(b"[" + b" " * 250_000, length=250_010))
        await asyncio.sleep(0.5)
        # a small one fits beside it
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(SAMPLE))
        assert (await fuzzkit.read_answer(reader)).status == 202
        # a 100 kB body does not: the older, slower one is dropped to make room
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        big = b'{"event": "media.play", "x": "' + b"x" * 100_000 + b'"}'
        writer.write(post(big))
        assert (await fuzzkit.read_answer(reader)).status == 400  # read: not a Plex payload
        dropped = await fuzzkit.read_answer(holder_r)
        assert (dropped.status, json.loads(dropped.body)) == (503, {"error": "busy"})
        assert dropped.headers["retry-after"] == "5"
        assert (await until_closed(holder_r, 3))[0] == b""
        assert rt.counters.connections["body_memory"] == 1
    short = [e for e in events(sink) if e["event"] == "bodies_short"]
    assert len(short) == 1 and short[0]["level"] == "warning" and short[0]["dropped"] == 1
    # summed up by the warning: the dropped request's own line is at debug (a flood stays quiet)
    busy = [e for e in events(sink) if e.get("status") == 503]
    assert [(e["outcome"], e["level"]) for e in busy] == [("busy", "debug")]


async def test_at_the_connection_limit_a_trickle_makes_room_for_a_newcomer() -> None:
    limits = replace(FAST, max_connections=16, slow_body_grace=0.3, header_timeout=30, body_stall=30,
                     body_deadline=30)
    async with fuzzkit.served(limits) as (port, rt):
        trickles = []
        for _ in range(16):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(post(b"{", length=1000))  # mid-body, one byte so far
            trickles.append((reader, writer))
        await asyncio.sleep(0.6)  # past the grace: trickles now
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(SAMPLE))
        assert (await fuzzkit.read_answer(reader)).status == 202
        dropped = []
        for r, _ in trickles:
            with contextlib.suppress(TimeoutError):
                dropped.append(await asyncio.wait_for(fuzzkit.read_answer(r), 0.2))
        assert dropped and all((a.status, json.loads(a.body)) == (503, {"error": "busy"}) for a in dropped)
        assert rt.counters.connections["body_slots"] == len(dropped)


# --- connections ----------------------------------------------------------------------------------


async def test_over_capacity_the_oldest_idle_connections_are_closed_first(sink: io.StringIO) -> None:
    limits = replace(FAST, max_connections=40, header_timeout=30, idle_timeout=30)
    async with fuzzkit.served(limits) as (port, _):
        old = [await asyncio.open_connection("127.0.0.1", port) for _ in range(40)]
        await asyncio.sleep(0.1)
        new = [await asyncio.open_connection("127.0.0.1", port) for _ in range(40)]
        await asyncio.sleep(0.2)
        closed_old = [r.at_eof() or await _closed(r) for r, _ in old]
        closed_new = [await _closed(r) for r, _ in new]
        assert sum(closed_old) >= 30 and sum(closed_new) <= 10
        assert closed_old[:10] == [True] * 10  # the oldest went first
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET_HEALTH)
        assert (await fuzzkit.read_answer(reader)).status == 200
    short = [e for e in events(sink) if e["event"] == "connections_short"]
    assert len(short) == 1 and short[0]["level"] == "warning"  # once a minute at most


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 0.05) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def test_with_no_idle_connection_a_newcomer_gets_503() -> None:
    limits = replace(FAST, max_connections=16, header_timeout=30, body_stall=30, body_deadline=30)
    async with fuzzkit.served(limits) as (port, _):
        busy = []
        for _ in range(16):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(post(b"{", length=1000))  # mid-body: not idle
            busy.append((reader, writer))
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data, _ = await until_closed(reader, 3)
        assert answer_of(data) == (503, {"error": "busy"})


async def test_accept_failures_for_want_of_descriptors_close_idle_ones_quietly(sink: io.StringIO) -> None:
    limits = replace(FAST, max_connections=1000, header_timeout=30, idle_timeout=30)
    async with fuzzkit.served(limits) as (port, _):
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(10)]
        await asyncio.sleep(0.1)
        loop = asyncio.get_running_loop()
        for _ in range(50):
            loop.call_exception_handler({"message": "socket.accept() out of system resource",
                                         "exception": OSError(errno.EMFILE, "Too many open files")})
        await asyncio.sleep(0.1)
        assert all([await _closed(r) for r, _ in conns])
        loop.call_exception_handler({"message": "something else", "exception": ValueError("x")})
    found = events(sink)
    assert len([e for e in found if e["event"] == "connections_short"]) == 1
    assert "Traceback" not in sink.getvalue()


def test_open_file_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(512, hard), hard))
        assert edge.raise_open_file_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_limits_defaults_and_hidden_overrides() -> None:
    default = edge.Limits()
    assert (default.idle_timeout, default.header_timeout, default.body_stall) == (15, 10, 30)
    assert default.max_raw_body == 1 << 20
    tuned = edge.Limits.from_env({"_CWHOOK_EDGE_IDLE_TIMEOUT": "1.5", "_CWHOOK_EDGE_BODY_BUDGET": "1000",
                                  "_CWHOOK_EDGE_HEADER_TIMEOUT": "junk", "_CWHOOK_EDGE_BODY_STALL": "-1"})
    assert (tuned.idle_timeout, tuned.body_budget, tuned.header_timeout, tuned.body_stall) == (1.5, 1000, 10, 30)
    assert default.capacity(1024) == 768 and default.capacity(65536) == 4096 and default.capacity(100) == 16


# --- protocol errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "error", "detail"), [
    (f"POST {PLEX} HTTP/1.1\r\nHost: t\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{{}}",
     "bad_payload", "Content-Encoding"),
    (f"POST {PLEX} HTTP/1.1\r\nHost: t\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nabcd",
     "bad_payload", "not valid gzip"),
    (f"POST {PLEX} HTTP/1.1\r\nHost: t\r\nContent-Encoding: compress\r\nContent-Length: 2\r\n\r\n{{}}",
     "bad_payload", "unsupported Content-Encoding"),
    (f"POST {PLEX} HTTP/1.1\x00\r\nHost: t\r\n\r\n", "bad_request", "malformed request line"),
    (f"POST {PLEX} HTTP/1.1\r\nHost: t\r\nbroken header {TOKENS['plex']}\r\n\r\n", "bad_request", "malformed"),
    (f"POST /{'x' * 9000}?{TOKENS['plex']} HTTP/1.1\r\nHost: t\r\n\r\n", "bad_request", "too long"),
    (f"POST {PLEX} HTTP/1.1\r\nHost: t\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\n{{}}",
     "expectation_failed", None),
])
async def test_protocol_errors_are_json_and_never_quote_the_request(sink: io.StringIO, raw: str, error: str,
                                                                    detail: str | None) -> None:
    async with fuzzkit.served(FAST) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw.encode("latin-1"))
        answer = await fuzzkit.read_answer(reader)
        body = json.loads(answer.body)
        assert answer.status in (400, 417) and body["error"] == error
        assert detail is None or detail in body["detail"]
        assert TOKENS["plex"].encode() not in answer.body
    assert TOKENS["plex"] not in sink.getvalue()
    assert "Traceback" not in sink.getvalue()


# --- hostile header values ------------------------------------------------------------------------

HOSTILE = {"non_ascii": [b"\xff", b"100-continue\xc3\xa9", b"\xed\xa0\x80"], "control": [b"a\x01b", b"\x7f"],
           "long": [b"a" * 2000, b"b" * 9000], "repeated": []}


async def test_every_header_cwhook_reads_refuses_hostile_values_in_json(sink: io.StringIO) -> None:
    """Each header aiohttp or cwhook interprets, on each endpoint: a JSON 4xx for non-ASCII,
    control, very long and repeated values (``Expect: \\xff`` used to be a 500)."""
    targets = [("POST", PLEX), ("POST", f"/webhook/jellyfintrakt?{TOKENS['jellyfin']}"), ("GET", "/healthz"),
               ("GET", "/metrics"), ("GET", "/nowhere")]
    seen: list[tuple[str, str, int]] = []
    async with fuzzkit.served(FAST) as (port, _):
        for name in edge.READ_HEADERS:
            for cls, values in HOSTILE.items():
                lines = [[v] for v in values] or [[b"x", b"y"], [b"100-continue", b"100-continue"]]
                for method, path in targets:
                    for value_lines in lines:
                        head = [("Host", b"t"), ("Content-Length", str(len(SAMPLE)).encode())]
                        if method == "GET":
                            head = head[:1]
                        head = fuzzkit.with_header(head, name, value_lines)
                        body = SAMPLE if method == "POST" else b""
                        reader, writer = await asyncio.open_connection("127.0.0.1", port)
                        writer.write(fuzzkit.serialize(f"{method} {path} HTTP/1.1", head, body))
                        answer = await asyncio.wait_for(fuzzkit.read_answer(reader), 5)
                        writer.close()
                        assert answer.is_json, (name, cls, path, answer)
                        assert 400 <= answer.status < 500, (name, cls, path, answer)
                        assert b"\\u" not in answer.body and b"aaaa" not in answer.body  # never quoted
                        seen.append((name, cls, answer.status))
    assert len(seen) == len(edge.READ_HEADERS) * 9 * len(targets)
    assert not [e for e in events(sink) if e["level"] in ("error", "critical")]
    expect = {status for name, cls, status in seen if name == "Expect" and cls == "non_ascii"}
    assert expect == {400}


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"deflate,chunked", b"gzip", b"identity"])
async def test_a_transfer_coding_other_than_chunked_is_refused_in_words(coding: bytes, sink: io.StringIO) -> None:
    """aiohttp takes ``gzip, chunked`` as chunked and passes the gzipped bytes on: the body was
    then refused as "not UTF-8". Only ``chunked`` is taken; compression is Content-Encoding's."""
    payload = gzip.compress(SAMPLE)
    chunked = f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n\r\n"
    async with fuzzkit.served(FAST) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(fuzzkit.serialize(f"POST {PLEX} HTTP/1.1", [("Host", b"t"), ("Transfer-Encoding", coding),
                                       ("Content-Type", b"application/json")], chunked))
        answer = await asyncio.wait_for(fuzzkit.read_answer(reader), 5)
        writer.close()
        assert answer.is_json and answer.status == 400, answer
        said = json.loads(answer.body)
        # Without chunked last, aiohttp's parser refuses the request itself (a malformed request).
        wanted = "unsupported Transfer-Encoding" if coding.endswith(b"chunked") else "malformed request"
        assert said["error"] == "bad_request" and wanted in said["detail"], said
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # chunked alone still goes through
        plain = f"{len(SAMPLE):x}\r\n".encode() + SAMPLE + b"\r\n0\r\n\r\n"
        writer.write(fuzzkit.serialize(f"POST {PLEX} HTTP/1.1", [("Host", b"t"), ("Transfer-Encoding", b"Chunked"),
                                       ("Content-Type", b"application/json")], plain))
        answer = await asyncio.wait_for(fuzzkit.read_answer(reader), 5)
        writer.close()
        assert answer.status in (200, 202), answer


def test_the_test_request_header_is_screened_like_the_others() -> None:
    from cwhook.ingest import dryrun

    assert dryrun.HEADER in edge.READ_HEADERS
