"""An incremental multipart/form-data scanner that keeps one field and discards the rest (pure).

Plex attaches a poster thumbnail after its JSON ``payload`` part; Emby sends its JSON
in a ``data`` part. The HTTP shell feeds the body as it arrives; the scanner returns
the wanted part as soon as it is complete (so the rest of the body is never read),
and keeps no more of any other part than the few bytes needed to find its end.
Both CRLF and bare LF line breaks are accepted.
"""

from __future__ import annotations

import re

from cwhook.kernel.event import BadPayload

_NAME = re.compile(rb"""\bname\*?=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))""", re.IGNORECASE)
_BOUNDARY = re.compile(r"""boundary=(?:"([^"]+)"|([^;\s]+))""", re.IGNORECASE)
MAX_HEADER_BYTES = 16384


def boundary_of(content_type: str) -> bytes:
    m = _BOUNDARY.search(content_type)  # compiled once: re.search's cache lookup cost more
    if not m:
        raise BadPayload("broken multipart body: no boundary in Content-Type")
    value = (m.group(1) or m.group(2)).encode("latin-1", "replace")
    if not 1 <= len(value) <= 200:
        raise BadPayload("broken multipart body: bad boundary")
    return value


def part_name(headers: bytes) -> str | None:
    for line in headers.splitlines():
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-disposition":
            m = _NAME.search(value)
            if m:
                raw = m.group(1) if m.group(1) is not None else m.group(2)
                return raw.replace(b'\\"', b'"').decode("utf-8", "replace")
    return None


class PartScanner:
    def __init__(self, content_type: str, field: str) -> None:
        self.delimiter = b"--" + boundary_of(content_type)
        self.field = field
        self._buf = b""
        self._state = "preamble"  # preamble | after_delimiter | headers | body | done
        self._wanted = False
        self._kept: list[bytes] = []
        self._kept_bytes = 0

    @property
    def held(self) -> int:
        """Bytes of the body this scanner keeps in memory now (the wanted part so far and a tail)."""
        return self._kept_bytes + len(self._buf)

    def _keep(self, data: bytes) -> None:
        self._kept.append(data)
        self._kept_bytes += len(data)

    def feed(self, chunk: bytes) -> bytes | None:
        """Take more of the body; the wanted part's bytes once it is complete."""
        buf = self._buf + chunk if self._buf else chunk
        self._buf = b""
        pos = 0  # how far into ``buf`` the scan has consumed
        delim = self.delimiter
        while True:
            if self._state == "preamble":
                at = buf.find(delim, pos)
                if at < 0:
                    self._buf = buf[max(pos, len(buf) - len(delim)):]
                    return None
                pos = at + len(delim)
                self._state = "after_delimiter"
            if self._state == "after_delimiter":
                pos = self._past_line_break(buf, pos)
                if pos < 0:
                    return None
                self._state = "headers"
            if self._state == "headers":
                end, skip = _header_end(buf, pos)
                if end < 0:
                    if len(buf) - pos > MAX_HEADER_BYTES:
                        raise BadPayload("broken multipart body: part headers too long")
                    self._buf = buf[pos:]
                    return None
                self._wanted = part_name(buf[pos:end]) == self.field
                self._kept = []
                self._kept_bytes = 0
                pos = end + skip
                self._state = "body"
            if self._state == "body":
                at = buf.find(b"\n" + delim, pos)
                if at < 0:
                    keep_from = max(pos, len(buf) - len(delim) - 1)
                    if self._wanted and keep_from > pos:
                        self._keep(buf[pos:keep_from])
                    self._buf = buf[keep_from:]
                    return None
                content_end = at - 1 if at > pos and buf[at - 1] == 0x0D else at
                if self._wanted:
                    self._keep(buf[pos:content_end])
                    self._state = "done"
                    return b"".join(self._kept)
                pos = at + 1 + len(delim)
                self._state = "after_delimiter"
            if self._state == "done":
                return None

    def _past_line_break(self, buf: bytes, pos: int) -> int:
        """Where the line after a boundary starts, or -1: wait for more of the body (kept in
        ``_buf``), or the closing ``--`` ended the scan."""
        if len(buf) - pos < 2:
            self._buf = buf[pos:]
            return -1
        if buf.startswith(b"--", pos):
            self._state = "done"
            return -1
        while pos < len(buf) and buf[pos] in (0x20, 0x09):
            pos += 1
        if buf.startswith(b"\r\n", pos):
            return pos + 2
        if buf.startswith(b"\n", pos):
            return pos + 1
        if buf[pos:] in (b"", b"\r"):
            self._buf = buf[pos:]
            return -1
        raise BadPayload("broken multipart body: no line break after the boundary")

    def finish(self) -> bytes:
        """The body ended without the wanted part being complete."""
        if self._state == "preamble":
            raise BadPayload("broken multipart body: no boundary line found")
        if self._state == "headers":
            raise BadPayload("broken multipart body: truncated part headers")
        if self._state == "body":
            raise BadPayload("broken multipart body: truncated part")
        raise BadPayload(f"multipart body has no '{self.field}' part")


def _header_end(buf: bytes, pos: int) -> tuple[int, int]:
    """(end of the part headers, length of the blank line), or (-1, 0) while incomplete."""
    if buf.startswith(b"\r\n", pos):  # a part without headers
        return pos, 2
    if buf.startswith(b"\n", pos):
        return pos, 1
    window = pos + MAX_HEADER_BYTES + 4  # headers are short: never scan a whole thumbnail
    crlf = buf.find(b"\r\n\r\n", pos, window)
    lf = buf.find(b"\n\n", pos, crlf if crlf >= 0 else window)
    if crlf >= 0 and (lf < 0 or crlf <= lf):
        return crlf, 4
    if lf >= 0:
        return lf, 2
    return -1, 0
