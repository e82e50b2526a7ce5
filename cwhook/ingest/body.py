"""A webhook's body, read as it arrives within the edge's limits (cwhook/ingest/edge.py).

Multipart bodies are streamed and only their JSON part kept; what is kept counts against the
body budget all requests share. The app answers each exception here (docs/troubleshooting.md,
"The HTTP answer").
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.web_protocol import RequestPayloadError

from cwhook.ingest import edge
from cwhook.ingest.multipart import PartScanner
from cwhook.kernel.event import BadPayload

CHUNK = 65536


class TooLarge(Exception):
    """The body is over a limit; the message names it (and the key that raises it, if any)."""


def _too_large(multipart: bool, cap: int, limits: edge.Limits) -> TooLarge:
    if multipart:
        return TooLarge(f"a multipart body may be at most {cap} bytes (server.max_body_bytes)")
    if cap < limits.max_raw_body:
        return TooLarge(f"the body may be at most {cap} bytes (server.max_body_bytes)")
    return TooLarge(f"a JSON or form body may be at most {cap} bytes (a fixed limit)")


def _part_too_large(limits: edge.Limits) -> TooLarge:
    return TooLarge(f"the payload part of a multipart body may be at most {limits.max_raw_body} bytes "
                    "(a fixed limit)")


class ClientGone(Exception):
    """The client closed the connection before its body was complete."""


class BodyTimeout(Exception):
    """The body did not arrive within the limits' body deadline."""


class _Body:
    """The body as it arrives (decoded), never more than ``limit`` bytes in all: ``read`` gives
    the next chunk, ``b""`` at its end. A plain awaited read, not an async generator: a generator
    left behind once the JSON part is found costs the loop a task per request to close it."""

    def __init__(self, request: web.Request, limit: int, multipart: bool, limits: edge.Limits) -> None:
        self.request = request
        self.limit = limit
        self.multipart = multipart
        self.limits = limits
        self.total = 0

    async def read(self) -> bytes:
        request = self.request
        try:
            chunk = await request.content.read(CHUNK)
        except RequestPayloadError as exc:
            edge.no_linger(request)  # the rest of the body cannot be read either
            if isinstance(exc.__cause__, ContentEncodingError):
                raise BadPayload(f"the body is not valid {request.headers.get('Content-Encoding', '')[:20]} "
                                 "data (Content-Encoding)") from None
            raise ClientGone(str(exc)) from None
        except edge.BodyEvicted:
            edge.dropped(request)
            raise edge.Busy() from None
        except (ConnectionResetError, aiohttp.ClientPayloadError, asyncio.IncompleteReadError) as exc:
            edge.no_linger(request)
            raise ClientGone(str(exc)) from None
        if not chunk:
            if edge.was_dropped(request):  # a read woken as its body was dropped
                edge.dropped(request)
                raise edge.Busy()
            return b""
        self.total += len(chunk)
        if self.total > self.limit:
            raise _too_large(self.multipart, self.limit, self.limits)
        return chunk


async def read_payload(request: web.Request, field: str, limit: int) -> tuple[str, bytes]:
    """(content type, bytes) of the body, or of its multipart part named ``field``.

    ``limit`` bounds a multipart body; a raw body, and the part kept from a multipart one,
    are bounded by the edge limits too (1 MiB). What is kept counts against the body budget
    shared by all requests (``edge.Busy`` when the edge dropped this body to make room).
    """
    limits = request.app[edge.LIMITS]
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in edge.ENCODINGS:
        raise BadPayload(f"unsupported Content-Encoding {encoding[:20]!r} (gzip and deflate are accepted)")
    ctype = request.headers.get("Content-Type", "")
    multipart = ctype.lower().startswith("multipart/")
    cap = limit if multipart else min(limit, limits.max_raw_body)
    if request.content_length is not None and request.content_length > cap:
        raise _too_large(multipart, cap, limits)
    lease = edge.Lease(request)
    try:
        if request.content.is_eof():  # the whole body is here already: nothing to wait for
            return await _read(request, ctype, field, cap, limits, lease)
        async with asyncio.timeout(limits.body_deadline):
            return await _read(request, ctype, field, cap, limits, lease)
    except TimeoutError:
        raise BodyTimeout() from None
    finally:
        lease.release()


async def _read(request: web.Request, ctype: str, field: str, cap: int, limits: edge.Limits,
                lease: edge.Lease) -> tuple[str, bytes]:
    multipart = ctype.lower().startswith("multipart/")
    body = _Body(request, cap, multipart, limits)
    if not multipart:
        parts: list[bytes] = []
        size = 0
        while chunk := await body.read():
            size += len(chunk)
            parts.append(chunk)
            lease.hold(size)
        return ctype, b"".join(parts)
    scanner = PartScanner(ctype, field)
    while chunk := await body.read():
        found = scanner.feed(chunk)
        if found is not None:
            if len(found) > limits.max_raw_body:
                raise _part_too_large(limits)
            # The rest of the body (Plex's thumbnail) is never read into memory.
            return "application/json", found
        if scanner.held > limits.max_raw_body:
            raise _part_too_large(limits)
        lease.hold(scanner.held)
    return "application/json", scanner.finish()
