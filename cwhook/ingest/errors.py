"""The JSON error answers of the HTTP side (docs/troubleshooting.md, "The HTTP answer").

``answer`` writes one of cwhook's own (its ``error`` code typed: a code outside
``cwhook.kernel.vocab.ErrorCode`` is a type error); ``http_exception_answer`` turns aiohttp's
own answers (404, 405 ...) into JSON. The app's middleware and the edge's safety net both use
it, so a 405 keeps its ``Allow`` header whichever of them catches it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from cwhook.kernel import jsontext
from cwhook.kernel.vocab import ErrorCode

# aiohttp's headers an answer must keep: the methods a 405 allows, when to come back.
KEPT_HEADERS = ("allow", "retry-after")


def answer(status: int, code: ErrorCode, detail: str | None = None,
           headers: Mapping[str, str] | None = None) -> web.Response:
    """``{"error": code}`` (and ``detail`` when given) with ``status``."""
    body = {"error": code} if detail is None else {"error": code, "detail": detail}
    return json_answer(status, body, headers)


def json_answer(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> web.Response:
    """Any JSON answer of cwhook's (what ``web.json_response`` gives, written by orjson)."""
    return web.Response(body=jsontext.dumps_bytes(body), status=status, headers=headers,
                        content_type="application/json", charset="utf-8")


def code_of(exc: web.HTTPException) -> str:
    """aiohttp's reason as a code: ``Method Not Allowed`` is ``method_not_allowed``."""
    return (exc.reason or "error").lower().replace(" ", "_")


def http_exception_answer(exc: web.HTTPException) -> web.Response:
    """aiohttp's own answer in JSON, keeping the headers that matter (``KEPT_HEADERS``)."""
    keep = {k: v for k, v in exc.headers.items() if k.lower() in KEPT_HEADERS}
    return json_answer(exc.status, {"error": code_of(exc)}, keep)
