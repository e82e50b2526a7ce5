"""The baseline: a bare aiohttp app that reads the whole body and answers 202 JSON."""

from __future__ import annotations

import sys

from aiohttp import web


async def handle(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"status": "queued"}, status=202)


def main() -> None:
    app = web.Application(client_max_size=1 << 30)
    app.router.add_post("/webhook/{server}", handle)
    app.router.add_get("/healthz", lambda r: web.json_response({"status": "ok"}))
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
