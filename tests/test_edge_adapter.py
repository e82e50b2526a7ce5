"""The private parts of aiohttp (and asyncio) cwhook relies on, all behind ingest/aiohttp_adapter.py.

When an aiohttp release renames or drops one of them, the first test here fails with a message
naming it; docs/architecture.md, "Checking an aiohttp upgrade", says what to do then.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import socket
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler

from cwhook.ingest import aiohttp_adapter as aio
from cwhook.ingest import edge
from cwhook.ingest.budget import BodyEvicted
from cwhook.ingest.protocol import EdgeProtocol
from cwhook.ingest.server import EdgeServer
from tests.builders import parse_python

ROOT = Path(__file__).parent.parent
LIBRARIES = ("aiohttp", "asyncio")
SEE = "see docs/architecture.md, 'Checking an aiohttp upgrade'"


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def problems(instances: dict[str, Any], relied_on: tuple[aio.Private, ...], library: str) -> list[str]:
    """One line per private name that is gone from (or changed its kind on) its owner's instance."""
    found = []
    for p in relied_on:
        obj = instances[p.owner]
        if p.kind is None:  # a method: looked up on the class
            if not callable(getattr(type(obj), p.name, None)):
                found.append(f"{library} no longer has {p.owner}.{p.name}: {SEE}")
        elif not hasattr(obj, p.name):
            found.append(f"{library} no longer has {p.owner}.{p.name}: {SEE}")
        elif not isinstance(getattr(obj, p.name), p.kind):
            found.append(f"{library}'s {p.owner}.{p.name} is no longer a {p.kind.__name__} "
                         f"(it is a {type(getattr(obj, p.name)).__name__}): {SEE}")
    return found


async def _instances() -> dict[str, Any]:
    """Fresh instances of the installed aiohttp's classes, as cwhook meets them."""
    loop = asyncio.get_running_loop()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    server = web.Server(handler, loop=loop)
    proto = RequestHandler(server, loop=loop)
    return {"RequestHandler": proto, "Server": server, "AppRunner": web.AppRunner(web.Application()),
            "StreamReader": StreamReader(proto, 16, loop=loop)}


AIOHTTP = f"aiohttp {_minor(aiohttp.__version__)}"


async def test_every_private_name_the_adapter_relies_on_is_still_there() -> None:
    found = problems(await _instances(), aio.RELIED_ON, AIOHTTP)
    a, b = socket.socketpair()
    transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol, sock=a)
    try:
        python = f"Python {sys.version_info.major}.{sys.version_info.minor}'s asyncio"
        found += problems({aio.ASYNCIO_RELIED_ON.owner: transport}, (aio.ASYNCIO_RELIED_ON,), python)
    finally:
        transport.close()
        b.close()
    assert not found, "\n".join(found)


async def test_a_name_gone_from_aiohttp_is_reported_by_name() -> None:
    gone = aio.Private("RequestHandler", "_no_such_attribute", bool, "")
    renamed_kind = aio.Private("RequestHandler", "_messages", int, "")
    method = aio.Private("AppRunner", "_no_such_method", None, "")
    found = problems(await _instances(), (gone, renamed_kind, method), AIOHTTP)
    assert found == [
        f"{AIOHTTP} no longer has RequestHandler._no_such_attribute: {SEE}",
        f"{AIOHTTP}'s RequestHandler._messages is no longer a int (it is a deque): {SEE}",
        f"{AIOHTTP} no longer has AppRunner._no_such_method: {SEE}",
    ]


async def test_the_body_functions_read_and_write_what_aiohttp_reads() -> None:
    """What the body budget does to a StreamReader through the adapter, seen through its public API."""
    loop = asyncio.get_running_loop()
    server = web.Server(lambda r: web.Response(), loop=loop)  # type: ignore[arg-type, return-value]
    reader = StreamReader(RequestHandler(server, loop=loop), 16, loop=loop)
    reader.feed_data(b"abc")
    assert (aio.buffered(reader), aio.received(reader)) == (3, 3)
    assert (aio.buffered(EMPTY_PAYLOAD), aio.received(EMPTY_PAYLOAD), aio.buffered(None)) == (0, 0, 0)
    aio.drop(reader, BodyEvicted("x"))
    assert aio.buffered(reader) == 0 and reader.is_eof() and reader.exception() is not None
    aio.forgive(reader)
    assert not reader.is_eof() and reader.exception() is None


# --- nothing else touches aiohttp's private parts, and nothing of cwhook shadows them ------------------


def _library_names(tree: ast.Module) -> set[str]:
    """The names a module binds to aiohttp's or asyncio's modules and classes."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith(LIBRARIES)}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(LIBRARIES):
            names |= {a.asname or a.name for a in node.names}
    return names


def _root(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _private_uses(path: Path, subclasses: set[str]) -> list[str]:
    tree = parse_python(path.read_text())
    library = _library_names(tree)
    found = []
    for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
        if any(_root(b) in library or _root(b) in subclasses for b in cls.bases):
            subclasses.add(cls.name)
    for owner in ast.walk(tree):
        inside_library_class = isinstance(owner, ast.ClassDef) and owner.name in subclasses
        for node in ast.walk(owner) if isinstance(owner, ast.ClassDef | ast.Module) else ():
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
                if inside_library_class or not on_self:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) > 1
                    and isinstance(node.args[1], ast.Constant) and str(node.args[1].value).startswith("_")):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
    return found


def test_no_module_but_the_adapter_touches_a_private_name_of_a_library_object() -> None:
    """``x._name`` where x is not self (whatever x is), or ``self._name`` in a subclass of one of
    aiohttp's or asyncio's classes (a name of theirs, or one they may take in a release)."""
    adapter = ROOT / "cwhook" / "ingest" / "aiohttp_adapter.py"
    subclasses = {"ServerHookRunner"}  # the adapter's own, which cwhook subclasses
    found = sorted({use for path in sorted((ROOT / "cwhook").rglob("*.py")) if path != adapter
                    for use in _private_uses(path, subclasses)})
    assert found == [], "private names used outside ingest/aiohttp_adapter.py:\n" + "\n".join(found)


def _own_names(cls: type, overrides: set[str]) -> set[str]:
    """What the class itself defines, and what its methods assign to ``self``."""
    tree = parse_python(textwrap.dedent(inspect.getsource(cls)))
    assigned = {t.attr for node in ast.walk(tree) if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign)
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}
    return (assigned | {n for n in vars(cls) if not n.startswith("__") and n != "_abc_impl"}) - overrides


async def test_the_edges_own_names_shadow_nothing_of_aiohttps() -> None:
    """EdgeProtocol, EdgeServer and Runner add names of their own to aiohttp's classes: none may
    be one aiohttp has (a new aiohttp attribute would be silently overwritten), none private."""
    loop = asyncio.get_running_loop()
    theirs = await _instances()
    inner = theirs["Server"]
    server = EdgeServer(inner, inner.request_handler, edge.Limits(), 100, Counter())
    proto = server()
    runner = edge.Runner(web.Application())
    cases = [
        (EdgeProtocol, proto, RequestHandler, theirs["RequestHandler"],
         {"connection_made", "connection_lost", "data_received", "log_exception", "handle_error"}),
        (EdgeServer, server, web.Server, inner, {"shutdown"}),
        (edge.Runner, runner, web.AppRunner, theirs["AppRunner"], {"setup", "cleanup", "serve_with"}),
    ]
    found = []
    for cls, obj, base, base_obj, overrides in cases:
        known = set(dir(base)) | set(getattr(base_obj, "__dict__", {}))
        own = _own_names(cls, overrides)
        found += [f"{cls.__name__}.{n} is aiohttp's {base.__name__}.{n} too" for n in sorted(own & known)]
        found += [f"{cls.__name__}.{n} is private" for n in sorted(own) if n.startswith("_")]
        assert own <= set(dir(obj)) | set(vars(obj)), (cls, own - set(dir(obj)))  # the reading saw them
    assert found == [], "\n".join(found)
    assert proto.loop is loop
