"""The HTTP side's answers (issue 19): one converter of aiohttp's own answers to JSON that keeps
their headers, one route table (the registry's), request ids counted per app."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from cwhook.ingest import edge
from cwhook.ingest.app import access_log, make_app
from cwhook.kernel import logs
from cwhook.kernel.vocab import ERROR_CODES
from cwhook.sources.registry import SOURCES
from tests.builders import runtime


def test_the_routes_are_the_registrys() -> None:
    """One route table: a webhook route per source of cwhook/sources/registry.py, then the two GETs."""
    app = make_app(runtime())
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    assert routes == {*(("POST", source.path) for source in SOURCES.values()),
                      ("GET", "/healthz"), ("GET", "/metrics")}


@pytest.mark.parametrize("raised", ["app", "edge"])
async def test_aiohttps_answers_keep_their_headers_wherever_caught(aiohttp_client: Any, raised: str) -> None:
    """The one converter (cwhook/ingest/errors.py): the app's middleware and the edge's safety net
    answer alike, and keep Allow and Retry-After (never another header of aiohttp's)."""
    async def refuse(request: web.BaseRequest) -> web.StreamResponse:
        raise web.HTTPMethodNotAllowed("POST", ["GET"], headers={"X-Other": "1"})

    async def unavailable(request: web.BaseRequest) -> web.StreamResponse:
        raise web.HTTPServiceUnavailable(headers={"Retry-After": "7"})

    for handler, status, code, kept in ((refuse, 405, "method_not_allowed", ("Allow", "GET")),
                                        (unavailable, 503, "service_unavailable", ("Retry-After", "7"))):
        if raised == "edge":
            resp = await edge.safety_net(handler)(make_mocked_request("POST", "/healthz"))
        else:
            resp = await access_log(make_mocked_request("POST", "/healthz", app=make_app(runtime())), handler)
        assert isinstance(resp, web.Response) and resp.status == status and resp.body is not None
        assert json.loads(bytes(resp.body)) == {"error": code}
        assert resp.headers.get(kept[0]) == kept[1] and "X-Other" not in resp.headers
    client = await aiohttp_client(make_app(runtime()))
    resp = await client.post("/healthz")  # aiohttp's router: no GET handler takes a POST
    assert (resp.status, resp.headers.get("Allow"), await resp.json()) == (405, "GET",
                                                                          {"error": "method_not_allowed"})
    resp = await client.get("/nothing-here")
    assert resp.status == 404 and (await resp.json())["error"] in ERROR_CODES  # not_found


async def test_request_ids_count_per_app(aiohttp_client: Any) -> None:
    """Each app numbers its requests from 1 (the counter is the app's, not the module's)."""
    sink = io.StringIO()
    logs.configure("debug", "json", sink)
    try:
        for _ in range(2):
            client = await aiohttp_client(make_app(runtime()))
            await client.get("/healthz")
            await client.get("/healthz")
    finally:
        logs.configure("info", "json")
    ids = [line["request_id"] for line in map(json.loads, sink.getvalue().splitlines())
           if line["event"] == "request"]
    assert ids == [1, 2, 1, 2]
