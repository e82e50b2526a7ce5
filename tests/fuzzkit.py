"""Hostile requests and a fast raw-socket client for them (used by test_fuzz and test_edge_*).

``requests_for(server, n, rnd)`` yields well-framed HTTP requests whose bodies are mutated
samples: oversized integers, 5,000-digit ids, NaN/Infinity, lone UTF-16 surrogates, deep
nesting, corrupt or unsupported Content-Encoding, broken multipart, mangled bytes, forms; and
some have the value of a standard header mutated (non-ASCII, control bytes, very long,
repeated, empty). ``probes_for`` does the same to GET /healthz, /metrics and unknown paths.
``MALFORMED`` are requests aiohttp itself rejects (bad request lines and header lines);
they are sent one per connection. ``Client`` pipelines requests over a few keep-alive
connections and reads every answer, reconnecting where the server closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import random
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

from aiohttp import web

from cwhook.config.schema import parse_config
from cwhook.ingest import edge
from cwhook.ingest.app import Runtime, make_app
from cwhook.kernel.event import Event
from cwhook.scrobble import preview
from cwhook.sources.registry import SOURCES
from cwhook.status.health import Counters
from tests import builders
from tests.conftest import FIXTURES, TOKENS, config_text

PATHS = {name: source.path for name, source in SOURCES.items()}
FIELD = {name: source.part for name, source in SOURCES.items()}
SAMPLES = {server: [p for p in sorted(FIXTURES.rglob("*.json")) if p.name.startswith(server)]
           for server in PATHS}

# Raw JSON fragments put in place of a value (numbers and escapes json.dumps cannot write).
EVIL = [
    "9" * 309, "-" + "9" * 400, "1" * 5000, '"' + "1" * 5000 + '"', '"' + "9" * 4301 + '"',
    "1e999", "-1e999", "1e-999", "NaN", "Infinity", "-Infinity", "-0", "0", "-1", "1.5",
    "9223372036854775808", "18446744073709551616", "2147483648", "1" + "0" * 20,
    '"\\ud800"', '"a\\udfffb"', '"\\udc00\\ud800"', '"tt\\ud800"', '"\\ud83d\\ude00"', '"\\u0000"',
    '"' + "x" * 3000 + '"', '""', '" "', "true", "false", "null", "[]", "{}", '"True"', '"nan"',
    '"inf"', '"1e400"', '"0x10"', '"\\u0661\\u0662"', '"\\u00b2"', '"tt' + "1" * 5000 + '"',
    '"imdb://tt' + "9" * 5000 + '"', '"tmdb://' + "9" * 5000 + '"',
    '"com.plexapp.agents.thetvdb://' + "9" * 5000 + "/" + "9" * 5000 + "/" + "9" * 5000 + '"',
    '"com.plexapp.agents.imdb://tt\\ud800?lang=en"', '[{"id": "imdb://tt' + "1" * 5000 + '"}]',
    '[{"id": "tvdb://\\udfff"}]', '{"\\ud800": 1}', "[" * 1500 + "]" * 1500, '{"a":' * 1100 + "1" + "}" * 1100,
    '"https://plex.tv/users/' + "a" * 5000 + '/avatar"',
]
EVIL_KEYS = ['"\\ud800"', '"event"', '"Event"', '"NotificationType"', '"\\udfffMetadata"', '"ProviderIds"']
EVENT_NAMES = ['"media.play"', '"media.scrobble"', '"media.rate"', '"playback.stop"', '"PlaybackStart"',
               '"PlaybackProgress"', '"PlaybackStop"', '"watched"', '"resume"', '"{action}"', '"\\ud800"',
               '"' + "e" * 5000 + '"']
ENCODINGS = ["br", "zstd", "compress", "x-gzip", "gzip, gzip", "gzip;q=1", "\u00e9".encode().decode("latin-1"),
             "identity", "deflate", "gzip"]
CTYPES = ["application/json", "text/plain", "text/plain; charset=utf-8", "", "application/octet-stream",
          "application/x-www-form-urlencoded", "multipart/form-data", "multipart/form-data; boundary=",
          "multipart/form-data; boundary=" + "b" * 300, "multipart/mixed; boundary=zz", "text/html"]


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*path, i))


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node = doc
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return doc


def mutate_json(doc: Any, rnd: random.Random, server: str) -> bytes:
    """The document with a few values replaced by raw hostile fragments, as JSON text."""
    paths = _PATHS_CACHE.setdefault(id(doc), list(_paths(doc)))
    doc = json.loads(json.dumps(doc))
    holes: dict[str, str] = {}
    for i in range(rnd.randint(1, 5)):
        mark = f"\x01hole{i}\x01"
        choice = rnd.random()
        path = rnd.choice(paths)
        try:
            if choice < 0.7:
                holes[mark] = rnd.choice(EVIL)
                doc = _set(doc, path, mark)
            elif choice < 0.8 and isinstance(doc, dict):
                key = {"plex": "event", "emby": "Event", "jellyfin": "NotificationType", "tautulli": "action"}[server]
                holes[mark] = rnd.choice(EVENT_NAMES)
                doc[key] = mark
            elif choice < 0.9 and path:
                node = doc
                for step in path[:-1]:
                    node = node[step]
                del node[path[-1]]
            elif isinstance(doc, dict):
                kmark = f"\x01key{i}\x01"
                holes[kmark] = rnd.choice(EVIL_KEYS)
                holes[mark] = rnd.choice(EVIL)
                doc[kmark] = mark
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    text = json.dumps(doc)
    for mark, raw in holes.items():
        text = text.replace(json.dumps(mark), raw)
    return text.encode("utf-8", "surrogatepass")


_PATHS_CACHE: dict[int, list[tuple[Any, ...]]] = {}


def mangle_bytes(data: bytes, rnd: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rnd.randint(1, 8)):
        pos = rnd.randrange(len(buf) + 1)
        op = rnd.random()
        if op < 0.4 and buf:
            buf[min(pos, len(buf) - 1)] = rnd.randrange(256)
        elif op < 0.7:
            buf[pos:pos] = rnd.choice([b"{", b"}", b"[", b'"', b":", b",", b"null", b"\xff", b"9" * 400,
                                       b"\\ud800", b"\\u", b"\xed\xa0\x80", b"\r\n--b\r\n"])
        else:
            del buf[pos:pos + rnd.randint(1, 50)]
    return bytes(buf)


def multipart(field_name: str, payload: bytes, rnd: random.Random, boundary: str = "fuzzB0undary") -> bytes:
    thumb = b"\xff\xd8\xff" + rnd.randbytes(rnd.choice([10, 10, 10, 3000, 70000]))
    parts = [(field_name, payload, None), ("thumb", thumb, "thumb.jpg")]
    if rnd.random() < 0.5:
        parts.reverse()
    return builders.multipart(parts, boundary, typed=False, preamble=b"preamble\r\n")[0]


def break_multipart(body: bytes, rnd: random.Random) -> bytes:
    choice = rnd.randrange(6)
    if choice == 0:
        return body[:rnd.randrange(len(body))]  # truncated
    if choice == 1:
        return body.replace(b"\r\n\r\n", b"\r\n", 1)  # headers never end
    if choice == 2:
        return body.replace(b"--fuzzB0undary", b"--otherBoundary")
    if choice == 3:
        return body.replace(b"Content-Disposition: form-data; ", b"X-" + b"h" * 20000 + b": ", 1)
    if choice == 4:
        return body.replace(b"\r\n", b"\n")
    return mangle_bytes(body, rnd)


@dataclass
class Req:
    server: str
    kind: str
    data: bytes


# The headers aiohttp or cwhook interprets, and two it never reads, with plausible values.
STANDARD_HEADERS = {
    "Expect": [b"100-continue"], "Content-Type": [b"application/json", b"multipart/form-data; boundary=b"],
    "Content-Length": [b"2"], "Content-Encoding": [b"gzip", b"identity"], "Transfer-Encoding": [b"chunked"],
    "Connection": [b"keep-alive", b"close", b"Upgrade"], "Host": [b"fuzz", b"127.0.0.1:8787"],
    "Accept": [b"*/*", b"application/openmetrics-text; version=1.0.0", b"text/plain;version=0.0.4"],
    "Upgrade": [b"websocket", b"h2c"], "X-Cwhook-Dry-Run": [b"1", b"0"], "Accept-Encoding": [b"gzip"],
    "User-Agent": [b"PlexMediaServer/1.40"],
}
NON_ASCII = [b"\xff", b"\x80", b"\xc3\xa9", b"\xed\xa0\x80", b"\xc0\x80", b"\xef\xbb\xbf", b"\xfe\xff"]
CONTROL = [bytes([c]) for c in (*range(0, 9), *range(11, 13), *range(14, 32), 127)]


def hostile_value(name: str, rnd: random.Random) -> tuple[str, list[bytes]]:
    """A class of hostile value for header ``name``, and the value lines to send (one or more)."""
    good = rnd.choice(STANDARD_HEADERS.get(name, [b"x"]))
    cls = rnd.choice(["non_ascii", "control", "long", "repeated", "empty"])
    if cls == "non_ascii":
        pos = rnd.randrange(len(good) + 1)
        return cls, [good[:pos] + rnd.choice(NON_ASCII) + good[pos:]]
    if cls == "control":
        pos = rnd.randrange(len(good) + 1)
        return cls, [good[:pos] + rnd.choice(CONTROL) + good[pos:]]
    if cls == "long":
        return cls, [good + b"a" * rnd.choice([1100, 4000, 8200, 20000])]
    if cls == "repeated":
        return cls, [good, rnd.choice([good, *STANDARD_HEADERS.get(name, [b"y"]), good + b"\xff"])]
    return cls, [rnd.choice([b"", b" ", b"\t"])]


def with_header(head: list[tuple[str, bytes]], name: str, values: list[bytes]) -> list[tuple[str, bytes]]:
    """``head`` with header ``name`` replaced by one line per value (added where it was absent)."""
    lower = name.lower()
    out = [(k, v) for k, v in head if k.lower() != lower]
    at = next((i for i, (k, _) in enumerate(head) if k.lower() == lower), len(out))
    return out[:at] + [(name, v) for v in values] + out[at:]


def serialize(line: str, head: list[tuple[str, bytes]], body: bytes = b"") -> bytes:
    return line.encode("latin-1") + b"\r\n" + b"".join(k.encode() + b": " + v + b"\r\n" for k, v in head) \
        + b"\r\n" + body


def request(server: str, body: bytes, ctype: str, rnd: random.Random, encoding: str | None = None,
            token: str | None = None, chunked: bool = False,
            header: tuple[str, list[bytes]] | None = None) -> bytes:
    token = TOKENS[server] if token is None else token
    query = rnd.choice([f"?{token}", f"?token={token}"]) if token else ""
    head: list[tuple[str, bytes]] = [("Host", b"fuzz")]
    if ctype:
        head.append(("Content-Type", ctype.encode("latin-1")))
    if encoding is not None:
        head.append(("Content-Encoding", encoding.encode("latin-1")))
    if chunked:
        head.append(("Transfer-Encoding", b"chunked"))
        pieces = [body[i:i + 1000] for i in range(0, len(body), 1000)]
        body = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
    else:
        head.append(("Content-Length", str(len(body)).encode()))
    if header is not None:
        name, values = header
        if name == "Content-Length" and chunked:
            name = "Transfer-Encoding"
        head = with_header(head, name, values)
    return serialize(f"POST {PATHS[server]}{query} HTTP/1.1", head, body)


PROBES = {"healthz": ("GET", "/healthz"), "metrics": ("GET", "/metrics"), "unknown": ("GET", "/nothing/here"),
          "post_healthz": ("POST", "/healthz")}


def probes_for(n: int, rnd: random.Random) -> Iterator[Req]:
    """GET /healthz, /metrics, an unknown path and POST /healthz, most with a mutated header."""
    for _ in range(n):
        kind = rnd.choice(list(PROBES))
        method, path = PROBES[kind]
        head: list[tuple[str, bytes]] = [("Host", b"fuzz"), ("Accept", b"*/*")]
        if method == "POST":
            head.append(("Content-Length", b"2"))
        label = "plain"
        if rnd.random() < 0.9:
            name = rnd.choice(list(STANDARD_HEADERS))
            cls, values = hostile_value(name, rnd)
            label = f"header:{name}:{cls}"
            head = with_header(head, name, values)
        yield Req(kind, label, serialize(f"{method} {path} HTTP/1.1", head, b"{}" if method == "POST" else b""))


HEADER_SHARE = 0.1  # of the webhook requests, those with a mutated standard header


def requests_for(server: str, n: int, rnd: random.Random) -> Iterator[Req]:
    docs = [json.loads(p.read_bytes()) for p in SAMPLES[server]]
    for i in range(n):
        doc = rnd.choice(docs)
        roll = rnd.random()
        if roll < 0.45:
            kind, body = "evil_values", mutate_json(doc, rnd, server)
        elif roll < 0.55:
            kind, body = "mangled_bytes", mangle_bytes(json.dumps(doc).encode(), rnd)
        else:
            kind, body = "sample", json.dumps(doc).encode()
        ctype = "application/json" if server != "jellyfin" else "text/plain"
        encoding: str | None = None
        wrap = rnd.random()
        if i == 0 or 0.32 <= wrap < 0.3205:  # one in every batch at least
            kind += "+too_large"
            body = b"{" + b" " * (1 << 20) + b"}"
        elif wrap < 0.12:
            kind += "+multipart"
            body = multipart(FIELD[server], body, rnd)
            ctype = "multipart/form-data; boundary=fuzzB0undary"
            if rnd.random() < 0.5:
                kind += "+broken"
                body = break_multipart(body, rnd)
        elif wrap < 0.17:
            kind += "+form"
            body = f"{FIELD[server]}=".encode() + quote_from_bytes(body).encode()
            if rnd.random() < 0.3:
                body += b"&x=%zz%" + bytes([rnd.randrange(256)])
            ctype = "application/x-www-form-urlencoded"
        elif wrap < 0.27:
            encoding = rnd.choice(ENCODINGS)
            kind += f"+encoding:{encoding!r}"
            good = zlib.compress(body) if encoding == "deflate" else gzip.compress(body)
            body = rnd.choice([good, good[:len(good) // 2], mangle_bytes(good, rnd), body, b"\x1f\x8b" + body])
        elif wrap < 0.32:
            kind += "+ctype"
            ctype = rnd.choice(CTYPES)
        token = None
        if rnd.random() < 0.03:
            token = rnd.choice(["", "wrong", TOKENS[server] + "x", "%" + TOKENS[server]])
            kind += "+token"
        header = None
        if rnd.random() < HEADER_SHARE:
            name = rnd.choice(list(STANDARD_HEADERS))
            cls, values = hostile_value(name, rnd)
            header = (name, values)
            kind += f"+header:{name}:{cls}"
        yield Req(server, kind, request(server, body, ctype, rnd, encoding, token, chunked=rnd.random() < 0.05,
                                        header=header))


def _line(server: str, token: str) -> str:
    return f"{PATHS[server]}?{token}"


def malformed(server: str) -> list[bytes]:
    """Requests aiohttp's parser rejects (or nearly): each quotes the token somewhere."""
    t = TOKENS[server]
    path = _line(server, t)
    good = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}".encode()
    return [
        f"POST {path} HTTP/1.1\x00\r\nHost: x\r\n\r\n".encode(),
        f"POST {path} HTTP/9.9\r\nHost: x\r\n\r\n".encode(),
        f"P\x01ST {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"POST  {path}  HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"POST {path}\tHTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"POST {path} HTTP/1.1\r\nHost: x\r\nno colon here {t}\r\n\r\n".encode(),
        f"POST {path} HTTP/1.1\r\nHost: x\r\nBad Name: {t}\r\n\r\n".encode(),
        f"POST {path} HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n".encode(),
        f"POST {path} HTTP/1.1\r\nHost: x\r\nX-A: b\r\n folded {t}\r\n\r\n".encode(),
        f"POST {path} HTTP/1.1\r\nHost: x\r\nX-A: \x00{t}\r\n\r\n".encode(),
        f"POST {path} HTTP/1.1\r\nHost: x\r\nX-{'a' * 9000}: {t}\r\n\r\n".encode(),
        f"POST /{'a' * 9000}?{t} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode() + b"".join(
            f"X-{i}: {t}\r\n".encode() for i in range(200)) + b"\r\n",
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n".encode(),
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n".encode(),
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}".encode(),
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode(),
        f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n".encode(),
        f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{t}\r\n0\r\n\r\n".encode(),
        f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{'f' * 40}\r\n\r\n".encode(),
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{{}}".encode(),
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Encoding: zstd\r\nContent-Length: 2\r\n\r\n{{}}".encode(),
        f"POST {path} HTTP/1.1\r\nContent-Length: 2\r\n\r\n{{}}".encode(),  # no Host
        f"POST {path} HTTP/1.1\r\nHost: x\r\nHost: y\r\nContent-Length: 2\r\n\r\n{{}}".encode(),
        f"POST http://x{path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}".encode(),
        f"POST {PATHS[server]}%3F{t} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}".encode(),
        f"POST {PATHS[server]}%3f{''.join(f'%{b:02x}' for b in t.encode())} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: 2\r\n\r\n{{}}".encode(),
        f"POST /webhook/{t} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}".encode(),
        f"POST {path}\r\n\r\n".encode(),
        f"GET {path} HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n\r\n".encode(),
        f"POST {path} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{{}}".encode(),
        f"POST {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Content-Length: 2\r\n\r\n{{}}".encode(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + t.encode() + b"\r\n\r\n",
        f"\xff\xfe{path}\r\n\r\n".encode("latin-1"),
        good.replace(b"Host: x", "Host: \u00e9\u00e9".encode()),
        good.replace(b"\r\n", b"\n"),
        good.replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\n\r\n"),
        f"POST {path} HTTP/1.0\r\nContent-Length: 2\r\n\r\n{{}}".encode(),
    ]


# --- the client -------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def is_json(self) -> bool:
        if not self.headers.get("content-type", "").startswith("application/json"):
            return False
        try:
            json.loads(self.body)
        except ValueError:
            return False
        return True


class Closed(Exception):
    pass


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    while True:  # an interim "100 Continue" is not the answer
        answer = await _read_one(reader)
        if not 100 <= answer.status < 200:
            return answer


async def _read_one(reader: asyncio.StreamReader) -> Answer:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise Closed() from exc
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0"))
    try:
        body = await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise Closed() from exc
    return Answer(status, headers, body)


@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    fivexx: list[tuple[str, str, int, bytes]] = field(default_factory=list)
    not_json: list[tuple[str, str, int, bytes]] = field(default_factory=list)
    unanswered: list[tuple[str, str]] = field(default_factory=list)
    headers: Counter[tuple[str, str, int]] = field(default_factory=Counter)  # (header, class, status)

    def note(self, req: Req, answer: Answer | None) -> None:
        self.sent[req.server] += 1
        if answer is None:
            self.unanswered.append((req.server, req.kind))
            return
        self.statuses[(req.server, answer.status)] += 1
        if "header:" in req.kind:
            name, cls = req.kind.rsplit("header:", 1)[1].split(":", 1)
            self.headers[(name, cls, answer.status)] += 1
        if answer.status >= 500:
            self.fivexx.append((req.server, req.kind, answer.status, answer.body[:300]))
        exposition = req.server == "metrics" and answer.status == 200  # Prometheus text, by design
        if not answer.is_json and not exposition:
            self.not_json.append((req.server, req.kind, answer.status, answer.body[:300]))

    def summary(self) -> dict[str, dict[str, int]]:
        out = {}
        for server in sorted(self.sent):
            out[server] = {
                "requests": self.sent[server],
                "5xx": sum(1 for f in self.fivexx if f[0] == server),
                "non_json": sum(1 for f in self.not_json if f[0] == server),
                "unanswered": sum(1 for f in self.unanswered if f[0] == server),
            }
        return out


async def pipeline(port: int, reqs: list[Req], tally: Tally, window: int = 32) -> None:
    """Send ``reqs`` pipelined over one connection at a time, reconnecting where it closes."""
    i = 0
    failures_here = 0
    while i < len(reqs):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            batch = reqs[i:i + window]
            writer.write(b"".join(r.data for r in batch))
            drain = asyncio.ensure_future(writer.drain())
            answered = 0
            for req in batch:
                try:
                    answer = await asyncio.wait_for(read_answer(reader), 30)
                except Closed:
                    break
                tally.note(req, answer)
                answered += 1
                if answer.headers.get("connection", "").lower() == "close":
                    break
            drain.cancel()
            if answered == 0:
                failures_here += 1
                if failures_here >= 2:  # the same request twice without an answer: count it
                    tally.note(reqs[i], None)
                    answered = 1
                    failures_here = 0
            else:
                failures_here = 0
            i += answered
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


async def one_shot(port: int, data: bytes, server: str, kind: str, tally: Tally, timeout: float = 10) -> None:
    """One request on its own connection; the answer is whatever comes before the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        try:
            answer: Answer | None = await asyncio.wait_for(read_answer(reader), timeout)
        except (Closed, TimeoutError):
            answer = None
        tally.note(Req(server, kind, data), answer)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def fuzz(port: int, per_endpoint: int, seed: int, connections: int = 6, window: int = 32,
               round_size: int = 2000) -> Tally:
    """``per_endpoint`` well-framed hostile requests for each endpoint, and the malformed ones.

    Requests are made and sent in rounds (memory stays flat for 100,000 per endpoint), with
    a tenth as many probes of /healthz, /metrics and other paths (``probes_for``). Requests
    with a Content-Encoding or a mutated header, and the probes, go one per connection (an
    undecodable body closes its connection); the rest are pipelined.
    """
    tally = Tally()
    rnd = random.Random(seed)
    for server in PATHS:
        for n, data in enumerate(malformed(server)):
            await one_shot(port, data, server, f"malformed#{n}", tally)

    async def single_lane(lane: list[Req]) -> None:
        for r in lane:
            await one_shot(port, r.data, r.server, r.kind, tally)

    done = 0
    while done < per_endpoint:
        size = min(round_size, per_endpoint - done)
        reqs = [r for server in PATHS for r in requests_for(server, size, rnd)]
        reqs += probes_for(max(1, size // 10), rnd)
        rnd.shuffle(reqs)
        # one per connection: an undecodable body, or a mutated header, may close the connection
        # or leave its framing in doubt
        alone = ["+encoding" in r.kind or "header:" in r.kind or r.server not in PATHS for r in reqs]
        singles = [r for r, one in zip(reqs, alone, strict=True) if one]
        piped = [r for r, one in zip(reqs, alone, strict=True) if not one]
        await asyncio.gather(*(pipeline(port, piped[i::connections], tally, window) for i in range(connections)),
                             *(single_lane(singles[i::3]) for i in range(3)))
        done += size
    return tally


@contextlib.asynccontextmanager
async def served(limits: edge.Limits | None = None, keep_events: bool = False,
                 extra_config: str = "") -> AsyncIterator[tuple[int, Runtime]]:
    """The real app behind the real edge runner, on a free loopback port, in this event loop."""
    cfg = parse_config(config_text(8787, Path("/tmp/cwhook-fuzz-state"), plex_extra=extra_config),
                       Path("/tmp/cwhook-fuzz.yml"))
    ingested: list[Event] = []

    async def ingest(event: Event) -> None:
        """Stands in for the daemon's inbox commit (kept only when ``keep_events``)."""
        if keep_events:
            ingested.append(event)

    rt = Runtime(cfg, Counters(), lambda: {"status": "ok"}, ingest, preview=preview.answer)
    app = make_app(rt)
    if limits is not None:
        edge.install(app, limits)
    runner = edge.Runner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=edge.BACKLOG)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield port, rt
    finally:
        await runner.cleanup()
