"""Micro-benchmark of the per-request pure work: the multipart scan and the parse.

    python bench/micro.py

Times (best of 7, microseconds per call) of PartScanner cutting the payload out of bench/run.py's
Plex multipart bodies, and of the Plex and Jellyfin parsers on their payloads. Run it before and
after a change on the same machine: only the comparison means anything.
"""

from __future__ import annotations

import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import request_body
from cwhook.ingest.multipart import PartScanner
from cwhook.sources.registry import SOURCES

CALLS = 2000


def best_us(fn: Callable[[], object]) -> float:
    return min(timeit.repeat(fn, number=CALLS, repeat=7)) / CALLS * 1e6


def plex(size: str) -> None:
    body, ctype = request_body(size)
    part = PartScanner(ctype, "payload").feed(body) or b""
    scan = best_us(lambda: PartScanner(ctype, "payload").feed(body))
    parse = best_us(lambda: SOURCES["plex"].parse("application/json", part, 1.0))
    print(f"plex {size}: multipart scan {scan:.1f} us ({len(body)} bytes), parse {parse:.1f} us "
          f"({len(part)} bytes)")


def main() -> None:
    plex("small")
    plex("large")
    body, ctype = request_body("jellyfin")
    print(f"jellyfin: parse {best_us(lambda: SOURCES['jellyfin'].parse(ctype, body, 1.0)):.1f} us "
          f"({len(body)} bytes)")


if __name__ == "__main__":
    main()
