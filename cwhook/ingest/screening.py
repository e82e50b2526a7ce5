"""What the edge answers without the app: protocol errors, timeouts, refusals, hostile headers.

aiohttp's parser errors and cwhook's own refusals are answered in JSON and never quote the
request (its line holds the token). ``header_problem`` screens the headers aiohttp or cwhook
reads before the app sees the request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from aiohttp import http_exceptions, web

from cwhook.ingest import errors
from cwhook.kernel import jsontext

_REASON = re.compile(r"[A-Za-z][A-Za-z '\-,.]{0,79}")


def raw_response(status: int, reason: str, body: dict[str, Any], extra: str = "") -> bytes:
    """A complete HTTP/1.1 response that closes the connection (for when aiohttp has no request)."""
    data = jsontext.dumps_bytes(body)
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n{extra}\r\n")
    return head.encode("latin-1") + data


HEADER_TIMEOUT_ANSWER = raw_response(408, "Request Timeout",
                                     {"error": "timeout", "detail": "the request headers took too long"})
BUSY_ANSWER = raw_response(503, "Service Unavailable", {"error": "busy"}, "Retry-After: 5\r\n")


# What aiohttp's parser could not take, in words (first match wins; order: most specific first).
_PROTOCOL_DETAILS: tuple[tuple[type[BaseException], str], ...] = (
    (http_exceptions.LineTooLong, "request line or header too long"),
    (http_exceptions.BadStatusLine, "malformed request line"),
    (http_exceptions.InvalidHeader, "malformed header"),
    (http_exceptions.InvalidURLError, "malformed URL"),
    (http_exceptions.TransferEncodingError, "malformed Transfer-Encoding"),
    (http_exceptions.ContentLengthError, "malformed Content-Length"),
)


def protocol_error(status: int, exc: BaseException | None) -> tuple[int, dict[str, str]]:
    """The JSON answer to what aiohttp could not parse; never quotes the request itself."""
    if status >= 500:
        return 500, {"error": "internal"}
    if isinstance(exc, http_exceptions.ContentEncodingError):
        return 400, {"error": "bad_payload",
                     "detail": "unsupported or corrupt Content-Encoding (gzip and deflate are accepted)"}
    detail = next((text for kind, text in _PROTOCOL_DETAILS if isinstance(exc, kind)), "malformed request")
    # llhttp's reason is the first line ("Invalid header token:"); the request it quotes
    # (token included) comes on the lines after it and is never repeated.
    reason = str(getattr(exc, "message", "") or "").split("\n", 1)[0].strip().rstrip(":")
    if _REASON.fullmatch(reason):
        detail += f" ({reason})"
    return 400, {"error": "bad_request", "detail": detail}


def json_error(status: int, body: dict[str, str], headers: Mapping[str, str] | None = None) -> web.Response:
    return errors.json_answer(status, body, headers)


# The request headers aiohttp or cwhook interprets. Each must appear at most once, hold only
# printable ASCII (tab included) and stay short; aiohttp itself bounds every line at 8 KiB.
# Any other header is never read, so anything goes there.
READ_HEADERS = ("Host", "Expect", "Connection", "Upgrade", "Content-Type", "Content-Length",
                "Content-Encoding", "Transfer-Encoding", "Accept", "X-Cwhook-Dry-Run")  # the last: preview
_READ = {name.lower(): name for name in READ_HEADERS}
MAX_READ_HEADER = 1024
_PRINTABLE = re.compile(r"[\t\x20-\x7e]*")


def header_problem(request: web.BaseRequest) -> tuple[int, dict[str, str]] | None:
    """What is wrong with a header cwhook or aiohttp reads (a JSON 4xx), or None.

    Never quotes the value. ``Expect`` other than ``100-continue`` is 417, as aiohttp
    answers it, but in JSON (aiohttp's own answer quotes the value and fails on non-ASCII).
    """
    found: dict[str, list[str]] = {}  # one pass over what came (a handful), not a lookup per name
    for name, value in request.headers.items():
        read = _READ.get(name.lower())
        if read is not None:
            found.setdefault(read, []).append(value)
    for name in READ_HEADERS:
        values = found.get(name)
        if not values:
            continue
        if len(values) > 1:
            return 400, {"error": "bad_request", "detail": f"malformed {name} header (repeated)"}
        value = values[0]
        if len(value) > MAX_READ_HEADER:
            return 400, {"error": "bad_request", "detail": f"malformed {name} header (too long)"}
        if not _PRINTABLE.fullmatch(value):
            return 400, {"error": "bad_request",
                         "detail": f"malformed {name} header (a byte that is not printable ASCII)"}
    # Each read header is now known to come once, printable and short.
    expect = found.get("Expect", [None])[0]
    if expect is not None and expect.strip().lower() != "100-continue":
        return 417, {"error": "expectation_failed", "detail": "only Expect: 100-continue is supported"}
    coding = found.get("Transfer-Encoding", [None])[0]
    if coding is not None and [c.strip().lower() for c in coding.split(",")] != ["chunked"]:
        # aiohttp would undo the chunking and pass the rest on as it is: a gzipped body read as JSON.
        return 400, {"error": "bad_request", "detail": "unsupported Transfer-Encoding (chunked is accepted; "
                                                       "a compressed body goes with Content-Encoding: gzip)"}
    return None
