from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cwhook.ingest.multipart import PartScanner, boundary_of, part_name
from cwhook.kernel.event import BadPayload

CT = "multipart/form-data; boundary=----b0undary"
PAYLOAD = b'{"event": "media.play", "x": "--not-a-boundary\\r\\n"}'


def body(parts: list[tuple[bytes, bytes]], nl: bytes = b"\r\n", preamble: bytes = b"") -> bytes:
    out = preamble
    for headers, content in parts:
        out += b"------b0undary" + nl + headers + nl + nl + content + nl
    return out + b"------b0undary--" + nl


PLEX = body([(b'Content-Disposition: form-data; name="payload"\r\nContent-Type: application/json', PAYLOAD),
             (b'Content-Disposition: form-data; name="thumb"; filename="thumb.jpg"', b"\xff\xd8" + b"\r\n" * 50)])


def scan(data: bytes, field: str = "payload", chunk: int = 7) -> bytes:
    scanner = PartScanner(CT, field)
    for i in range(0, len(data), chunk):
        found = scanner.feed(data[i:i + chunk])
        if found is not None:
            return found
    return scanner.finish()


def test_payload_first_then_thumb() -> None:
    assert scan(PLEX) == PAYLOAD


def test_stops_reading_once_found() -> None:
    scanner = PartScanner(CT, "payload")
    end = PLEX.index(b"------b0undary", 20)
    assert scanner.feed(PLEX[:end + 16]) == PAYLOAD  # the thumbnail was never fed


def test_thumb_first_and_lf_only() -> None:
    thumb_first = body([(b'Content-Disposition: form-data; name="thumb"; filename="t.jpg"', b"\x00" * 5000),
                        (b'Content-Disposition: form-data; name="data"', PAYLOAD)], nl=b"\n")
    assert scan(thumb_first, "data") == PAYLOAD


def test_preamble_and_quoted_boundary() -> None:
    data = body([(b"Content-Disposition: form-data; name=payload", PAYLOAD)], preamble=b"ignored preamble\r\n")
    assert scan(data) == PAYLOAD
    assert boundary_of('multipart/form-data; boundary="a b"') == b"a b"


@pytest.mark.parametrize(("data", "message"), [
    (b"no boundary at all", "no boundary line"),
    (b"------b0undary\r\nContent-Disposition: form-data; name=\"payload\"\r\n", "truncated part headers"),
    (b"------b0undary\r\nContent-Disposition: form-data; name=\"payload\"\r\n\r\n{}", "truncated part"),
    (body([(b'Content-Disposition: form-data; name="other"', b"x")]), "no 'payload' part"),
    (b"------b0undaryXX", "no line break after the boundary"),
])
def test_broken(data: bytes, message: str) -> None:
    with pytest.raises(BadPayload, match=message):
        scan(data)


def test_no_boundary_parameter() -> None:
    with pytest.raises(BadPayload, match="no boundary"):
        PartScanner("multipart/form-data", "payload")


def test_part_name_forms() -> None:
    assert part_name(b'Content-Disposition: form-data; name="payload"') == "payload"
    assert part_name(b"content-disposition: form-data; name=data") == "data"
    assert part_name(b'Content-Disposition: form-data; filename="x"; name="thumb"') == "thumb"
    assert part_name(b"Content-Type: text/plain") is None


def test_huge_headers_refused() -> None:
    scanner = PartScanner(CT, "payload")
    with pytest.raises(BadPayload, match="headers too long"):
        scanner.feed(b"------b0undary\r\n" + b"X" * 20000)


@settings(max_examples=200, deadline=None)
@given(chunk=st.integers(1, 400), thumb=st.binary(max_size=3000), thumb_first=st.booleans(),
       nl=st.sampled_from([b"\r\n", b"\n"]))
def test_any_chunking_gives_the_same_part(chunk: int, thumb: bytes, thumb_first: bool, nl: bytes) -> None:
    parts = [(b'Content-Disposition: form-data; name="payload"', PAYLOAD),
             (b'Content-Disposition: form-data; name="thumb"; filename="t.jpg"', thumb.replace(b"--", b"-"))]
    data = body(parts[::-1] if thumb_first else parts, nl=nl)
    assert scan(data, chunk=chunk) == PAYLOAD
