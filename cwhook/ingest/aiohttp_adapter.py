"""The one place cwhook touches private parts of aiohttp (and of asyncio's socket transport).

The edge needs a few things aiohttp does not offer publicly: whether a connection is between
requests, the body being received, how much of it is buffered, closing without lingering,
and a hook to serve an app through its own ``Server``. Each is a named function here; no
other module of cwhook reads or writes a leading-underscore attribute of a library object
(tests/test_edge_adapter.py checks both that and that every name below still exists, on real
instances of the installed aiohttp). See docs/architecture.md, "Checking an aiohttp upgrade".
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.streams import EmptyStreamReader, StreamReader
from aiohttp.web_protocol import RequestHandler


@dataclass(frozen=True)
class Private:
    """One private name cwhook relies on: its owner's class name, the name, what it holds on a
    fresh instance (None for a method) and what cwhook does with it."""

    owner: str
    name: str
    kind: type | None
    use: str


RELIED_ON: tuple[Private, ...] = (
    Private("RequestHandler", "_messages", deque, "requests parsed, not yet handled: (message, body) pairs"),
    Private("RequestHandler", "_request_in_progress", bool, "a request is being handled"),
    Private("RequestHandler", "_force_close", bool, "the connection closes after this request"),
    Private("RequestHandler", "_lingering_time", float, "seconds the rest of a body is read after the answer"),
    Private("RequestHandler", "_request_count", int, "grows by one when a request's headers are complete"),
    Private("RequestHandler", "_reading_paused", bool, "aiohttp stopped reading the socket (app not reading)"),
    Private("Server", "_loop", asyncio.AbstractEventLoop, "the loop a server's connections run in"),
    Private("Server", "_kwargs", dict, "the options each connection's RequestHandler is made with"),
    Private("AppRunner", "_make_server", None, "builds the Server an AppRunner serves through"),
    # (a request without a body has an EmptyStreamReader, which has none of these: counted as 0)
    Private("StreamReader", "_buffer", deque, "the chunks of a body not read yet"),
    Private("StreamReader", "_buffer_offset", int, "how far into the first chunk reading got"),
    Private("StreamReader", "_size", int, "bytes of a body buffered, not read yet"),
    Private("StreamReader", "_eof", bool, "the end of a body was received"),
    Private("StreamReader", "_exception", type(None), "what a body's reader raises"),
)
# asyncio's selector socket transport, the other library object whose internals are used
ASYNCIO_RELIED_ON = Private("_SelectorSocketTransport", "max_size", int, "bytes read from a socket at once")


# --- a connection (RequestHandler) ------------------------------------------------------------


def requests_waiting(proto: RequestHandler) -> bool:
    """Requests parsed on this connection that the app has not started on yet."""
    return bool(proto._messages)


def latest_body(proto: RequestHandler) -> StreamReader | None:
    """The body of the latest request parsed on this connection (None if none is waiting)."""
    return proto._messages[-1][1] if proto._messages else None


def handling_request(proto: RequestHandler) -> bool:
    return bool(proto._request_in_progress)


def closing(proto: RequestHandler) -> bool:
    """The connection closes once the current answer is written (``force_close`` was called)."""
    return bool(proto._force_close)


def linger_for(proto: RequestHandler, seconds: float) -> None:
    """After the answer, read and throw away the rest of the body for ``seconds`` (0: close at once)."""
    proto._lingering_time = float(seconds)


def requests_parsed(proto: RequestHandler) -> int:
    """Requests whose headers were complete on this connection so far."""
    return int(proto._request_count)


def reading_paused(proto: RequestHandler) -> bool:
    """aiohttp stopped reading the socket because the app is not reading the body."""
    return bool(proto._reading_paused)


# --- the connection factory (Server) and the runner ---------------------------------------------


def server_loop(server: web.Server) -> asyncio.AbstractEventLoop:
    return server._loop


def handler_options(server: web.Server) -> dict[str, Any]:
    """The keyword arguments the server makes each connection's ``RequestHandler`` with."""
    return dict(server._kwargs)


class ServerHookRunner(web.AppRunner):
    """An ``AppRunner`` whose ``Server`` passes through ``serve_with`` before it is used."""

    def serve_with(self, server: web.Server) -> web.Server:
        return server

    async def _make_server(self) -> web.Server:
        return self.serve_with(await super()._make_server())


# --- a request body (StreamReader) ---------------------------------------------------------------


def buffered(body: StreamReader | None) -> int:
    """Bytes of a body aiohttp holds that the app has not read yet."""
    return 0 if body is None or isinstance(body, EmptyStreamReader) else int(body._size)


def received(body: StreamReader | None) -> int:
    """Bytes of a body received so far."""
    return 0 if body is None or isinstance(body, EmptyStreamReader) else int(body.total_bytes)


def drop(body: StreamReader, exc: BaseException) -> None:
    """Free what a body's reader holds, and make its reads raise ``exc``.

    The end of the body is marked too: a read woken already (its waiter done, which
    ``set_exception`` leaves alone) loops back to wait while the buffer is empty and the body
    not at its end; with the end marked it returns instead."""
    body._buffer.clear()
    body._buffer_offset = 0
    body._size = 0
    body.set_exception(exc)
    body._eof = True


def forgive(body: StreamReader) -> None:
    """Once the app has seen the exception of a dropped body: clear it and the end mark, so
    that aiohttp's lingering close reads (and throws away) the rest for a moment instead of
    taking it for an error, and the client reads its answer before the close."""
    body._exception = None
    body._eof = False


# --- asyncio's socket transport -------------------------------------------------------------------


def small_reads(transport: asyncio.BaseTransport, size: int) -> None:
    """Read at most ``size`` bytes a time from this socket (asyncio's default is 256 KiB), so
    that what one read brings is small beside the body budget."""
    if isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = size  # type: ignore[attr-defined]
