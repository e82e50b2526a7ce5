"""Naming an item to Trakt: item forms, the remembered match, searches, history checks.

An item is named by its best form first (``bodies.item_forms``); on a 404 the next
form is tried, then ``/search/{id_type}/{id}``, then a title search. What matched is
remembered per item in the outbox file (bounded), so it survives restarts. Before a
play is added to the history a second time (an earlier attempt cut off by a crash or
a lost answer), the history is asked by the item's Trakt id (docs/durability.md).

When to send, retries and setting aside are the lane's (cwhook/trakt/delivery.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from cwhook.kernel import clock as clocks
from cwhook.kernel import logs
from cwhook.kernel.event import Event
from cwhook.kernel.items import TraktAliases
from cwhook.state.store import AsyncStore, NewEntry, StoreUnavailable
from cwhook.trakt import bodies as tb
from cwhook.trakt.client import NotFound, Response, TraktClient

log = logs.get("cwhook.trakt.delivery")  # the events keep the logger they always had

HISTORY_LOOKBACK = 3600.0  # how far before a late stop's time its earlier attempt is looked for


class Unsure(Exception):
    """A late play whose earlier attempt may have reached Trakt's history, and no way to ask:
    set aside for the user to decide (docs/durability.md) rather than risk a second play."""


@dataclass
class Outcome:
    result: str  # sent, stale, late_history, dry_run, ...
    detail: dict[str, Any] = field(default_factory=dict)
    follow_up: NewEntry | None = None  # added to the outbox as this entry is removed


Call = Callable[[tb.Body], Awaitable[Response]]


def _sync_not_found(resp: Response) -> bool:
    """/sync answers 200/201 with a not_found section instead of a 404."""
    data = resp.data
    if not isinstance(data, dict):
        return False
    missing = data.get("not_found")
    return isinstance(missing, dict) and any(
        isinstance(v, list) and v for v in missing.values()
    )


class Matcher:
    """One account's way of naming items to Trakt; ``dry`` says nothing is really sent."""

    def __init__(self, client: TraktClient, db: AsyncStore, dry: Callable[[], bool],
                 wall: clocks.Clock, aliases: TraktAliases) -> None:
        self.client = client
        self.db = db
        self.store = db.store
        self.dry = dry
        self.wall = wall  # the time a match is remembered at
        self.aliases = aliases  # what Trakt matched each item to, for the rules (docs/rules.md)

    async def post(self, path: str, body: tb.Body, sync: bool = False) -> Response:
        if self.dry():
            log.info("trakt_would_send", method="POST", path=path, body=body)
            return Response(0, None)
        resp = await self.client.request("POST", path, body)
        if sync and _sync_not_found(resp):
            raise NotFound(404, "listed under not_found")
        return resp

    async def with_item(self, event: Event, forms: list[tb.Body], call: Call,
                        result: str) -> Outcome:
        """Try each way of naming the item until Trakt knows it."""
        dry = self.dry()
        key = event.identity
        tried: list[str] = []
        cached = None if dry else await self.db.call(self.store.match_get, key)
        candidates = ([cached] if cached else []) + [f for f in forms if f != cached]
        for form in candidates:
            found = await self._attempt(call, form, tried)
            if found is not None:
                return await self._matched(event, form, found, result, dry)
        if dry:
            return Outcome("dry_run", {"note": "no item form to send"})
        text = tb.text_search(event)
        for path, rtype in tb.id_searches(event) + ([text] if text else []):
            for searched in await self._search(event, path, rtype, tried):
                if searched in candidates:
                    continue
                candidates.append(searched)
                found = await self._attempt(call, searched, tried)
                if found is not None:
                    return await self._matched(event, searched, found, result, dry)
        raise NotFound(404, "no match on Trakt; tried " + "; ".join(tried or ["nothing to try"]))

    async def _attempt(self, call: Call, form: tb.Body, tried: list[str]) -> Response | None:
        try:
            return await call(form)
        except NotFound:
            tried.append(_describe(form))
            return None
        except tb.NotExpressible:  # e.g. an absolute episode number in a /sync body
            tried.append(_describe(form) + " (cannot be sent there)")
            return None

    async def _search(self, event: Event, path: str, rtype: str, tried: list[str]) -> list[tb.Body]:
        try:
            resp = await self.client.request("GET", path)
        except NotFound:
            tried.append(f"GET {path}")
            return []
        forms = tb.forms_from_search(event, resp.data, rtype)
        if not forms:
            tried.append(f"GET {path} (no usable result)")
        return forms

    async def _matched(self, event: Event, form: tb.Body, resp: Response, result: str,
                       dry: bool) -> Outcome:
        if dry:
            return Outcome("dry_run")
        key = event.identity
        self.aliases.learn_answer(event, resp.data)
        with contextlib.suppress(StoreUnavailable):  # only a cache: the call itself succeeded
            await self.db.call(self.store.match_put, key, tb.remembered_form(form, resp.data), self.wall())
        detail: dict[str, Any] = {"status": resp.status}
        if isinstance(resp.data, dict) and "action" in resp.data:
            detail["trakt_action"] = resp.data["action"]
        if resp.status == 409:
            detail["note"] = "already scrobbled (409)"
        return Outcome(result, detail)

    # --- has this play reached the history already? --------------------------------------

    async def in_history(self, event: Event, since: float) -> bool:
        """Did an earlier attempt of this play (cut off by a crash or a lost answer) reach
        Trakt's history? Asked before adding it there: by the item's Trakt id (the cached
        match, else a search by its ids or title), or for an episode named by its show, in
        the show's history by season and number. ``Unsure`` when nothing can be asked."""
        if self.dry():
            return False
        # An hour back: the play may carry Trakt's clock, not ours (a host whose clock runs
        # ahead), and the rules allow no second play of the item within the hour anyway.
        start = tb.iso(since - HISTORY_LOOKBACK)
        cached = await self.db.call(self.store.match_get, event.identity)
        targets = tb.history_targets(cached) if cached else []
        for rtype, trakt_id in targets:
            if rtype != "show":
                return await self._history_has(f"/sync/history/{rtype}s/{trakt_id}?start_at={start}")
        text = tb.text_search(event)
        searches = [s for s in tb.id_searches(event) if s[1] != "show"]
        if event.kind == "movie" and text:
            searches.append(text)
        for path, rtype in searches:
            forms = await self._search(event, path, rtype, [])
            if not forms:
                continue
            trakt_id = forms[0][rtype]["ids"]["trakt"]
            return await self._history_has(f"/sync/history/{rtype}s/{trakt_id}?start_at={start}")
        if event.kind == "episode" and event.season is not None and event.number is not None:
            shows = [trakt_id for rtype, trakt_id in targets if rtype == "show"]
            return await self._in_show_history(event, (event.season, event.number), shows, text, start)
        raise _unsure(event)

    async def _in_show_history(self, event: Event, episode: tuple[int, int], shows: list[int],
                               text: tuple[str, str] | None, start: str) -> bool:
        """An episode named by its show: its season and number in the show's history."""
        if not shows:
            searches = [s for s in tb.id_searches(event) if s[1] == "show"]
            searches += [text] if text else []
            for path, rtype in searches:
                forms = await self._search(event, path, rtype, [])
                if forms:
                    shows.append(forms[0]["show"]["ids"]["trakt"])
                    break
        if not shows:
            raise _unsure(event)
        resp = await self.client.request("GET", f"/sync/history/shows/{shows[0]}?start_at={start}")
        return any(tb.is_episode(item, *episode) for item in resp.data)

    async def _history_has(self, path: str) -> bool:
        resp = await self.client.request("GET", path)
        return isinstance(resp.data, list) and bool(resp.data)


def _unsure(event: Event) -> Unsure:
    log.warning("history_check_impossible", item=event.label(),
                note="no Trakt id found to check; set aside rather than risk a second play")
    return Unsure("an earlier attempt may have reached Trakt's history and there is no Trakt "
                  "id to check it; if the play is not on trakt.tv, `cwhook outbox send` it")


def _describe(form: tb.Body) -> str:
    parts = []
    for key in ("movie", "show", "episode"):
        value = form.get(key)
        if isinstance(value, dict):
            parts.append(f"{key} {value.get('ids') or value.get('title') or value}")
    return ", ".join(parts) or str(form)
