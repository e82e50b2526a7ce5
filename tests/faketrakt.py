"""A fake Trakt API and OAuth server on loopback, behaving as reference/trakt-api.md says.

* Every API call must carry Content-Type: application/json (412), trakt-api-version: 2
  and trakt-api-key = the client id (403); POSTs need a valid, unexpired bearer
  token (401).
* POST /scrobble/start|pause|stop: the item is matched by ids (movies: trakt,
  slug, imdb, tmdb; episodes: trakt, tvdb - as in Trakt's contract; shows:
  trakt, slug, tvdb, imdb, tmdb); an episode under its show by season/number
  or by absolute number (``number_abs``, for shows that have them, like the
  anime in the catalogue): an absolute number sent as season/number (S25E1000,
  S01E1000) names no episode and gets 404, as on the real service; unknown
  items get 404. A stop below 1 % is a
  422; 1-79 % answers action "pause"; 80 % and more answers "scrobble" and is
  recorded in the history, and the same item scrobbled again within an hour
  gets 409 with watched_at/expires_at.
* More than one POST per second per token gets 429 with Retry-After.
* /sync/ratings, /sync/ratings/remove, /sync/watchlist/remove, /sync/history,
  /sync/history/remove and the searches work on the same catalogue.
* OAuth: refresh tokens are single-use; a used or unknown one gets 400
  invalid_grant. The device flow answers scripted statuses.
* Fault injection: ``outage_until`` (503), ``script`` (statuses for the next
  requests), ``delay`` (slow answers), ``drop`` (close the connection), and
  ``faults``: per path and user, answers that are not Trakt's or are broken
  (``Fault``), optionally after Trakt has acted on the call (``act``).
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MOVIE_KEYS = ("trakt", "slug", "imdb", "tmdb")
EPISODE_KEYS = ("trakt", "tvdb")
SHOW_KEYS = ("trakt", "slug", "tvdb", "imdb", "tmdb")


@dataclass
class Movie:
    title: str
    year: int
    ids: dict[str, Any]


@dataclass
class Show:
    title: str
    year: int
    ids: dict[str, Any]
    episodes: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    absolute: dict[int, tuple[int, int]] = field(default_factory=dict)  # number_abs -> (season, number)


def default_catalogue() -> tuple[list[Movie], list[Show]]:
    movies = [
        Movie("Guardians of the Galaxy", 2014,
              {"trakt": 28, "slug": "guardians-of-the-galaxy-2014", "imdb": "tt2015381", "tmdb": 118340}),
        Movie("Big Trouble in Little China", 1986, {"trakt": 1001, "imdb": "tt0090728", "tmdb": 6978}),
        Movie("The Menu", 2022, {"trakt": 1002, "imdb": "tt9764362", "tmdb": 593643}),
        Movie("2 Fast 2 Furious", 2003, {"trakt": 1003, "imdb": "tt0322259", "tmdb": 584}),
        Movie("Barry Lyndon", 1975, {"trakt": 1004, "imdb": "tt0072684", "tmdb": 3175}),
        Movie("The Harder They Fall", 1956, {"trakt": 1005, "imdb": "tt0049291", "tmdb": 43195}),
    ]
    shows = [
        Show("Breaking Bad", 2008,
             {"trakt": 1, "slug": "breaking-bad", "tvdb": 81189, "imdb": "tt0903747", "tmdb": 1396},
             {(1, 1): {"trakt": 16, "tvdb": 349232, "imdb": "tt0959621", "tmdb": 62085},
              (1, 2): {"trakt": 17, "tvdb": 349235, "imdb": "tt1054724", "tmdb": 62086}}),
        Show("Futurama", 1999, {"trakt": 2, "tvdb": 73871, "imdb": "tt0149460", "tmdb": 615},
             {(2, 15): {"trakt": 50, "tvdb": 76546, "imdb": "tt0584424", "tmdb": 8203},
              (2, 16): {"trakt": 51, "tvdb": 76547, "imdb": "tt0584425", "tmdb": 8204}}),
        Show("Baki Hanma", 2021, {"trakt": 3, "tvdb": 398109, "tmdb": 117987},
             {(1, 1): {"trakt": 60, "tvdb": 8530933, "imdb": "tt14765720", "tmdb": 3087250}}),
        Show("长风渡", 2023, {"trakt": 4, "tmdb": 209867},
             {(1, 11): {"trakt": 70, "tmdb": 4533239}}),
        # Anime numbered absolutely by its fans; Trakt keeps TVDB's seasons and knows the
        # absolute numbers. Episode 1000 is S21E108 (season/number are of this catalogue).
        Show("One Piece", 1999,
             {"trakt": 5, "slug": "one-piece", "tvdb": 81797, "imdb": "tt0388629", "tmdb": 37854},
             {(1, 1): {"trakt": 90, "tvdb": 190001}, (21, 108): {"trakt": 91, "tvdb": 8790411},
              (21, 109): {"trakt": 92, "tvdb": 8790412}},
             {1: (1, 1), 1000: (21, 108), 1001: (21, 109)}),
    ]
    return movies, shows


FAULT_KINDS = ("html", "badjson", "redirect_same", "redirect_other", "status", "cut", "hang",
               "endless", "badchunk")


@dataclass
class Fault:
    """Answer the next ``count`` calls to ``path`` (a prefix) of ``user`` (None: anyone) badly.

    kinds: ``html`` (``status`` with a captive portal's page), ``badjson`` (201, JSON cut short),
    ``redirect_same``/``redirect_other`` (302 to /moved on this host / on "localhost"), ``status``
    (``status`` with a JSON body and ``headers``), ``cut`` (headers announce 200 bytes, 10 come,
    the connection closes), ``hang`` (headers and part of the body, then nothing for ``seconds``),
    ``endless`` (201, chunked, 64 KiB every 20 ms until the client gives up), ``badchunk`` (201,
    chunked, then an invalid chunk-size line, held open ``seconds``).
    ``act``: Trakt acts on the call first (records the play), then answers so.
    """

    path: str
    kind: str
    count: int = 1
    user: str | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    act: bool = False
    seconds: float = 30.0
    hits: int = 0


@dataclass
class Call:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any
    at: float
    status: int = 0
    answer: Any = None
    user: str = ""  # whose token the call carried ("" when none or unknown)


class FakeTrakt:
    def __init__(self, client_id: str = "test-client-id", client_secret: str = "test-secret") -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.movies, self.shows = default_catalogue()
        self.access_tokens: dict[str, float] = {}  # token -> expires at (unix)
        self.refresh_tokens: set[str] = set()
        self.used_refresh_tokens: set[str] = set()
        self.issued_refresh_tokens: list[str] = []  # in the order issued
        self.token_lifetime = 86400
        self.calls: list[Call] = []
        self.histories: dict[str, list[tuple[str, float]]] = {"default": []}  # user -> (item key, watched_at)
        self.token_user: dict[str, str] = {}  # access or refresh token -> the user it belongs to
        self.user_outage_until: dict[str, float] = {}  # per-user outage (503 for that user's calls)
        self.device_user = "default"  # who logs in through the device flow
        self.last_post: dict[str, float] = {}
        self.rate_limit = True
        self.outage_until = 0.0
        self.script: list[int] = []
        self.delay = 0.0
        self.slow_calls = 0  # this many next calls answer only after slow_delay seconds
        self.slow_delay = 0.0
        self.drop = 0
        self.device_script: list[int] = []
        self.device_polls = 0
        self.refresh_count = 0
        self.refreshed_at: list[float] = []  # when each successful refresh was answered
        self.answer_delay = 0.0  # seconds between acting on a call and answering it
        self.answer_delay_prefix = "/"  # ...only for paths starting with this
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.lock = threading.Lock()
        self._current: Call | None = None  # the call being handled (handlers never await first)
        self.faults: list[Fault] = []
        self.endless_sent = 0  # bytes of endless answers written

    # --- set-up helpers -------------------------------------------------------------

    @property
    def history(self) -> list[tuple[str, float]]:
        """The `default` user's history (see ``histories`` for every user's)."""
        return self.histories.setdefault("default", [])

    @history.setter
    def history(self, value: list[tuple[str, float]]) -> None:
        self.histories["default"] = value

    def _hist(self) -> list[tuple[str, float]]:
        """The history of the user whose call is being handled."""
        user = (self._current.user if self._current is not None else "") or "default"
        return self.histories.setdefault(user, [])

    def issue_tokens(self, lifetime: int | None = None, user: str = "default") -> tuple[str, str, int]:
        access, refresh = secrets.token_hex(16), secrets.token_hex(16)
        self.token_user[access] = self.token_user[refresh] = user
        expires = int(time.time()) + (lifetime if lifetime is not None else self.token_lifetime)
        self.access_tokens[access] = expires
        self.refresh_tokens.add(refresh)
        self.issued_refresh_tokens.append(refresh)
        return access, refresh, expires

    def add_movies(self, count: int, first: int = 0) -> list[Movie]:
        """Numbered movies (imdb tt9000000+i, trakt 900000+i) for counting per item."""
        made = [Movie(f"Counted Movie {i}", 2001, {"trakt": 900000 + i, "imdb": f"tt{9000000 + i}"})
                for i in range(first, first + count)]
        self.movies.extend(made)
        return made

    def history_counts(self, user: str = "default") -> dict[str, int]:
        """How many plays each item has in a user's history."""
        counts: dict[str, int] = {}
        with self.lock:
            for key, _ in self.histories.get(user, []):
                counts[key] = counts.get(key, 0) + 1
        return counts

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def posts(self, prefix: str = "/") -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.method == "POST" and c.path.startswith(prefix)]

    def scrobbles(self, status: int | None = None) -> list[Call]:
        return [c for c in self.posts("/scrobble/") if status is None or c.status == status]

    def watched_stops(self) -> list[Call]:
        """Stops that Trakt recorded as watched (201 scrobble)."""
        return [c for c in self.scrobbles(201) if isinstance(c.answer, dict)
                and c.answer.get("action") == "scrobble"]

    # --- matching ----------------------------------------------------------------------

    @staticmethod
    def _ids_match(want: Any, have: dict[str, Any], keys: tuple[str, ...]) -> bool:
        if not isinstance(want, dict):
            return False
        return any(k in want and str(want[k]) == str(have.get(k)) for k in keys if k in have)

    def find_movie(self, item: Any) -> Movie | None:
        ids = item.get("ids") if isinstance(item, dict) else None
        return next((m for m in self.movies if self._ids_match(ids, m.ids, MOVIE_KEYS)), None)

    def find_show(self, item: Any) -> Show | None:
        ids = item.get("ids") if isinstance(item, dict) else None
        return next((s for s in self.shows if self._ids_match(ids, s.ids, SHOW_KEYS)), None)

    def find_episode(self, body: dict[str, Any]) -> tuple[Show, tuple[int, int], dict[str, Any]] | None:
        episode = body.get("episode")
        if not isinstance(episode, dict):
            return None
        if "show" in body:
            show = self.find_show(body["show"])
            if show is None:
                return None
            if "number_abs" in episode:
                found = show.absolute.get(episode["number_abs"])
                key = found if found is not None else (-1, -1)
            else:
                key = (episode.get("season"), episode.get("number"))
            if key in show.episodes:
                return show, key, show.episodes[key]
            return None
        for show in self.shows:
            for key, ids in show.episodes.items():
                if self._ids_match(episode.get("ids"), ids, EPISODE_KEYS):
                    return show, key, ids
        return None

    def resolve(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """(history key, answer fragment) for a scrobble-style body, or None."""
        if "movie" in body:
            movie = self.find_movie(body["movie"])
            if movie is None:
                return None
            return f"movie:{movie.ids['trakt']}", {"movie": {"title": movie.title, "year": movie.year,
                                                            "ids": movie.ids}}
        found = self.find_episode(body)
        if found is None:
            return None
        show, (season, number), ids = found
        absolute = next((n for n, key in show.absolute.items() if key == (season, number)), None)
        return f"episode:{ids['trakt']}", {
            "episode": {"season": season, "number": number, "number_abs": absolute, "ids": ids},
            "show": {"title": show.title, "year": show.year, "ids": show.ids},
        }

    # --- handlers -------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            body = await request.json() if request.can_read_body else None
        except ValueError:
            body = None
        call = Call(request.method, request.path, request.query_string, dict(request.headers), body,
                    time.time())
        call.user = self.token_user.get(request.headers.get("Authorization", "").removeprefix("Bearer "), "")
        if request.path == "/oauth/token" and isinstance(body, dict):
            call.user = self.token_user.get(str(body.get("refresh_token")), "")
        with self.lock:
            self.calls.append(call)
        fault = self._fault(call)
        if fault is not None:
            if fault.act:
                self._current = call
                acted = await handler(request)
                call.answer = {"acted": acted.status}
            return await self._faulty(request, call, fault)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.slow_calls > 0:
            self.slow_calls -= 1
            await asyncio.sleep(self.slow_delay)
        if self.drop > 0:
            self.drop -= 1
            assert request.transport is not None
            request.transport.close()
            call.status = -1
            raise web.HTTPInternalServerError()
        if time.time() < max(self.outage_until, self.user_outage_until.get(call.user, 0.0)):
            call.status = 503
            return web.json_response({"error": "outage"}, status=503)
        if self.script:
            status = self.script.pop(0)
            call.status = status
            headers = {"Retry-After": "1"} if status == 429 else None
            return web.json_response({"error": "scripted"}, status=status, headers=headers)
        self._current = call
        response = await handler(request)
        call.status = response.status
        if self.answer_delay and request.path.startswith(self.answer_delay_prefix):
            # Trakt has acted (history recorded, token rotated); the answer is still on its way.
            await asyncio.sleep(self.answer_delay)
        if isinstance(response, web.Response) and response.body is not None:
            import json

            try:
                call.answer = json.loads(bytes(response.body))  # type: ignore[arg-type]
            except (ValueError, TypeError):
                call.answer = None
        return response

    def _fault(self, call: Call) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if (fault.hits < fault.count and call.path.startswith(fault.path)
                        and fault.user in (None, call.user or "default")):
                    fault.hits += 1
                    return fault
        return None

    async def _faulty(self, request: web.Request, call: Call, fault: Fault) -> web.StreamResponse:
        call.status = -2  # answered by a fault
        kind = fault.kind
        if kind == "html":
            return web.Response(status=fault.status, content_type="text/html",
                                text="<html><body>Please log in to the hotel Wi-Fi</body></html>")
        if kind == "badjson":
            return web.Response(status=201, content_type="application/json", text='{"id": 1, "action": "scro')
        if kind in ("redirect_same", "redirect_other"):
            host = "127.0.0.1" if kind == "redirect_same" else "localhost"
            return web.Response(status=302, headers={"Location": f"http://{host}:{self.port}/moved"})
        if kind == "status":
            return web.json_response({"error": "injected"}, status=fault.status, headers=fault.headers)
        transport = request.transport
        assert transport is not None
        if kind in ("cut", "hang"):
            transport.write(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 200\r\n\r\n{\"added\": ")
            if kind == "hang":
                await asyncio.sleep(fault.seconds)
        elif kind == "endless":
            transport.write(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n")
            chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
            while not transport.is_closing():
                transport.write(chunk)
                self.endless_sent += 0x10000
                await asyncio.sleep(0.02)
        elif kind == "badchunk":
            transport.write(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nzz-not-a-size\r\n")
            await asyncio.sleep(fault.seconds)
        transport.close()
        raise web.HTTPInternalServerError()

    async def moved(self, request: web.Request) -> web.Response:
        """Where the injected redirects point: a page that answers anything 200 (or 201)."""
        return web.json_response({"moved": True}, status=201 if request.host.startswith("localhost") else 200)

    def _check_api(self, request: web.Request, need_auth: bool) -> web.Response | None:
        if request.method == "POST" and not request.headers.get("Content-Type", "").startswith(
                "application/json"):
            return web.json_response({"error": "use application/json"}, status=412)
        if request.headers.get("trakt-api-version") != "2":
            return web.json_response({"error": "trakt-api-version must be 2"}, status=400)
        if request.headers.get("trakt-api-key") != self.client_id:
            return web.json_response({"error": "invalid api key"}, status=403)
        if not request.headers.get("User-Agent", "").startswith("cwhook/"):
            return web.json_response({"error": "user agent"}, status=400)
        if need_auth:
            auth = request.headers.get("Authorization", "")
            token = auth.removeprefix("Bearer ")
            expires = self.access_tokens.get(token)
            if not auth.startswith("Bearer ") or expires is None or expires < time.time():
                return web.json_response({"error": "invalid_token"}, status=401)
            if self.rate_limit and request.method != "GET":
                who = self.token_user.get(token, token)  # Trakt limits per user, whatever the token
                last = self.last_post.get(who, 0.0)
                now = time.monotonic()
                if now - last < 1.0:
                    return web.json_response(
                        {"error": "rate limit"}, status=429,
                        headers={"Retry-After": "1",
                                 "X-Ratelimit": '{"name":"AUTHED_API_POST_LIMIT","period":1,"limit":1}'})
                self.last_post[who] = now
        return None

    async def scrobble(self, request: web.Request) -> web.Response:
        refused = self._check_api(request, need_auth=True)
        if refused is not None:
            return refused
        action = request.match_info["action"]
        body = self._current.body
        if not isinstance(body, dict) or not isinstance(body.get("progress"), (int, float)):
            return web.json_response({"error": "progress missing"}, status=422)
        progress = float(body["progress"])
        resolved = self.resolve(body)
        if resolved is None:
            return web.json_response({"error": "not found"}, status=404)
        key, item = resolved
        answer_action = action
        if action == "stop":
            if progress < 1:
                return web.json_response({"error": "progress below 1"}, status=422)
            if progress >= 80:
                now = time.time()
                recent = [t for k, t in self._hist() if k == key and now - t < 3600]
                if recent:
                    watched = recent[-1]
                    return web.json_response({
                        "watched_at": _iso(watched), "expires_at": _iso(watched + 3600)}, status=409)
                self._hist().append((key, now))
                answer_action = "scrobble"
            else:
                answer_action = "pause"
        return web.json_response({"id": len(self._hist()) or 0, "action": answer_action,
                                  "progress": progress, "sharing": {"twitter": False}, **item},
                                 status=201)

    async def sync(self, request: web.Request) -> web.Response:
        refused = self._check_api(request, need_auth=True)
        if refused is not None:
            return refused
        body = self._current.body
        if not isinstance(body, dict):
            return web.json_response({"error": "bad body"}, status=400)
        added: dict[str, int] = {"movies": 0, "shows": 0, "seasons": 0, "episodes": 0}
        not_found: dict[str, list[Any]] = {"movies": [], "shows": [], "seasons": [], "episodes": []}
        for kind in ("movies", "shows", "episodes"):
            for item in body.get(kind, []) or []:
                keys = self._sync_keys(kind, item)
                if keys:
                    added[kind] += 1
                    if request.path == "/sync/history/remove":
                        gone = {key for key, _ in keys}
                        self._hist()[:] = [h for h in self._hist() if h[0] not in gone]
                    if request.path == "/sync/history":
                        watched_at = _parse_iso(item.get("watched_at")) if kind != "shows" else None
                        for key, when in keys:
                            self._hist().append((key, when or watched_at or time.time()))
                else:
                    not_found[kind].append(item)
        key = "deleted" if request.path.endswith("/remove") else "added"
        status = 200 if request.path.endswith("/remove") else 201
        return web.json_response({key: added, "not_found": not_found}, status=status)

    def _sync_keys(self, kind: str, item: Any) -> list[tuple[str, float | None]]:
        """History keys (and nested watched_at) a /sync item stands for; [] when unknown."""
        if not isinstance(item, dict):
            return []
        if kind == "movies":
            movie = self.find_movie(item)
            return [(f"movie:{movie.ids['trakt']}", None)] if movie else []
        if kind == "episodes":
            found = self.find_episode({"episode": item})
            return [(f"episode:{found[2]['trakt']}", None)] if found else []
        show = self.find_show(item)
        if show is None:
            return []
        keys: list[tuple[str, float | None]] = []
        for season in item.get("seasons", []) or []:
            for ep in season.get("episodes", []) or []:
                ids = show.episodes.get((season.get("number"), ep.get("number")))
                if ids is None:
                    return []
                keys.append((f"episode:{ids['trakt']}", _parse_iso(ep.get("watched_at"))))
        return keys or [(f"show:{show.ids['trakt']}", None)]

    async def history_get(self, request: web.Request) -> web.Response:
        refused = self._check_api(request, need_auth=True)
        if refused is not None:
            return refused
        kind = request.match_info["kind"][:-1]  # movies -> movie
        key = f"{kind}:{request.match_info['id']}"
        since = _parse_iso(request.query.get("start_at")) or 0.0
        if kind == "show":  # every episode of the show, with its season and number
            show = next((s for s in self.shows if str(s.ids["trakt"]) == request.match_info["id"]), None)
            found = []
            for i, (k, t) in enumerate(self._hist()):
                for (season, number), ids in (show.episodes.items() if show else []):
                    if k == f"episode:{ids['trakt']}" and t >= since:
                        found.append({"id": i, "watched_at": _iso(t), "action": "scrobble", "type": "episode",
                                      "episode": {"season": season, "number": number, "ids": ids},
                                      "show": {"title": show.title, "year": show.year, "ids": show.ids}})
            return web.json_response(found)
        entries = [{"id": i, "watched_at": _iso(t), "action": "scrobble", "type": kind}
                   for i, (k, t) in enumerate(self._hist()) if k == key and t >= since]
        return web.json_response(entries)

    async def search_id(self, request: web.Request) -> web.Response:
        refused = self._check_api(request, need_auth=False)
        if refused is not None:
            return refused
        id_type, value = request.match_info["id_type"], request.match_info["id"]
        kind = request.query.get("type", "")
        results: list[dict[str, Any]] = []
        if kind in ("", "movie"):
            for m in self.movies:
                if str(m.ids.get(id_type)) == value:
                    results.append({"type": "movie", "score": None, "movie": {"title": m.title,
                                    "year": m.year, "ids": m.ids}})
        for show in self.shows:
            if kind in ("", "show") and str(show.ids.get(id_type)) == value:
                results.append({"type": "show", "score": None, "show": {"title": show.title,
                                "year": show.year, "ids": show.ids}})
            if kind in ("", "episode"):
                for (season, number), ids in show.episodes.items():
                    if str(ids.get(id_type)) == value:
                        results.append({"type": "episode", "score": None,
                                        "episode": {"season": season, "number": number, "ids": ids},
                                        "show": {"title": show.title, "year": show.year, "ids": show.ids}})
        return web.json_response(results)

    async def search_text(self, request: web.Request) -> web.Response:
        refused = self._check_api(request, need_auth=False)
        if refused is not None:
            return refused
        kind = request.match_info["kind"]
        query = request.query.get("query", "").replace("\\", "").casefold()
        years = request.query.get("years")
        results: list[dict[str, Any]] = []
        pool: list[Any] = self.movies if kind == "movie" else self.shows
        for item in pool:
            if item.title.casefold() == query and (not years or str(item.year) == years):
                results.append({"type": kind, "score": 1000.0,
                                kind: {"title": item.title, "year": item.year, "ids": item.ids}})
        return web.json_response(results)

    # --- OAuth ----------------------------------------------------------------------------------

    def _token_answer(self, user: str) -> dict[str, Any]:
        access, refresh, _ = self.issue_tokens(user=user)
        return {"access_token": access, "token_type": "bearer", "expires_in": self.token_lifetime,
                "refresh_token": refresh, "scope": "public", "created_at": int(time.time())}

    async def oauth_token(self, request: web.Request) -> web.Response:
        body = self._current.body or {}
        if body.get("client_id") != self.client_id or body.get("client_secret") != self.client_secret:
            return web.json_response({"error": "invalid_client"}, status=401)
        if body.get("grant_type") != "refresh_token":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        token = body.get("refresh_token")
        if token not in self.refresh_tokens:
            return web.json_response({"error": "invalid_grant",
                                      "error_description": "refresh token used or unknown"}, status=400)
        self.refresh_tokens.discard(token)
        self.used_refresh_tokens.add(token)
        self.refresh_count += 1
        answer = web.json_response(self._token_answer(self.token_user.get(str(token), "default")))
        await answer.prepare(request)
        await answer.write_eof()  # the new pair has left; the old refresh token is dead
        self.refreshed_at.append(time.time())
        return answer

    async def device_code(self, request: web.Request) -> web.Response:
        body = self._current.body or {}
        if body.get("client_id") != self.client_id:  # Trakt (Doorkeeper): an unknown app is a 401
            return web.json_response({"error": "invalid_client"}, status=401)
        return web.json_response({"device_code": "dev-code-1", "user_code": "5055CC52",
                                  "verification_url": "https://trakt.tv/activate",
                                  "expires_in": 600, "interval": 1})

    async def device_token(self, request: web.Request) -> web.Response:
        body = self._current.body or {}
        if body.get("client_id") != self.client_id or body.get("client_secret") != self.client_secret:
            return web.json_response({"error": "invalid_client"}, status=401)
        if body.get("code") != "dev-code-1":
            return web.json_response({}, status=404)
        self.device_polls += 1
        if self.device_script:
            status = self.device_script.pop(0)
            if status != 200:
                return web.json_response({}, status=status)
        return web.json_response(self._token_answer(self.device_user))

    # --- life cycle --------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/scrobble/{action:start|pause|stop}", self.scrobble)
        for path in ("/sync/history", "/sync/history/remove", "/sync/ratings", "/sync/ratings/remove",
                     "/sync/watchlist/remove"):
            app.router.add_post(path, self.sync)
        app.router.add_get("/search/{id_type:trakt|imdb|tmdb|tvdb}/{id}", self.search_id)
        app.router.add_get("/sync/history/{kind:movies|episodes|shows}/{id}", self.history_get)
        app.router.add_route("*", "/moved", self.moved)
        app.router.add_get("/search/{kind:movie|show}", self.search_text)
        app.router.add_post("/oauth/token", self.oauth_token)
        app.router.add_post("/oauth/device/code", self.device_code)
        app.router.add_post("/oauth/device/token", self.device_token)
        return app

    def start(self) -> FakeTrakt:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            # a stop cancels handlers still held (answer_delay) after 1 s, instead of the thread
            # outliving stop()'s 10 s join
            self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            # handlers the shutdown timeout gave up on (a hang, a held answer) are cancelled and
            # awaited here: left pending in a closed loop, the garbage collector would log "Task was
            # destroyed but it is pending!" later, into whatever test's log sink is then configured
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts))


def _parse_iso(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    import calendar

    try:
        return calendar.timegm(time.strptime(value[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
