"""The durable floor: the least any receiver that keeps a 202's promise must do.

    python bench/floor.py PORT DBFILE

Reads the body, cuts the `payload` part out of a multipart body with bytes.find (a JSON body
is the payload), parses it with the standard library's json, appends the payload to SQLite (WAL,
synchronous=NORMAL) in group commits gathered for 2 ms, and answers 202 JSON after the commit.
No token, no limits, no rules, no logging: what cwhook spends beyond this is its own overhead.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys

from aiohttp import web

MARKER = b'name="payload"'


class GroupCommit:
    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS inbox (id INTEGER PRIMARY KEY, body TEXT)")
        self.pending: list[tuple[str, asyncio.Future[None]]] = []

    async def append(self, text: str) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((text, done))
        if len(self.pending) == 1:
            asyncio.get_running_loop().call_later(0.002, self.commit)
        await done

    def commit(self) -> None:
        batch, self.pending = self.pending, []
        self.db.execute("BEGIN")
        self.db.executemany("INSERT INTO inbox (body) VALUES (?)", [(text,) for text, _ in batch])
        self.db.execute("COMMIT")
        for _, done in batch:
            done.set_result(None)


def payload_of(body: bytes) -> bytes:
    at = body.find(MARKER)
    if at < 0:
        return body
    start = body.find(b"\r\n\r\n", at) + 4
    return body[start:body.find(b"\r\n--", start)]


def main() -> None:
    store = GroupCommit(sys.argv[2])

    async def handle(request: web.Request) -> web.Response:
        payload = payload_of(await request.read())
        json.loads(payload)
        await store.append(payload.decode())
        return web.json_response({"status": "queued"}, status=202)

    app = web.Application(client_max_size=1 << 30)
    app.router.add_post("/webhook/{server}", handle)
    app.router.add_get("/healthz", lambda r: web.json_response({"status": "ok"}))
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
