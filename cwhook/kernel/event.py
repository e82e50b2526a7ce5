"""The normalized event every parser produces, and what a parser may answer instead."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from cwhook.kernel import jsontext
from cwhook.kernel.records import once, quick_init

Source = Literal["plex", "jellyfin", "emby", "tautulli"]
Action = Literal["start", "pause", "stop", "scrobble", "rate", "progress",
                 "mark_watched", "mark_unwatched"]
Kind = Literal["movie", "episode", "show", "season"]


MAX_DETAIL = 300  # a detail quotes the payload at times: never a megabyte of it
MAX_ID = 2**63 - 1  # no media id is larger; longer digit strings are bad values


def _short(text: str) -> str:
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL] + "..."


class BadPayload(Exception):
    """The request body is not understood (answered 400 with this detail)."""

    def __init__(self, detail: str) -> None:
        super().__init__(_short(detail))


@quick_init
@dataclass(frozen=True)
class Ignored:
    """Understood, but nothing for us to do (answered 200 with the reason code)."""

    reason: str
    detail: str = ""
    # What the decision journal shows of it, when the parser got that far (no effect on the answer).
    user: str | None = field(default=None, compare=False)
    item: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", _short(self.detail))


@quick_init
@dataclass(frozen=True)
class Ids:
    imdb: str | None = None
    tmdb: int | None = None
    tvdb: int | None = None
    trakt: int | None = None

    def as_dict(self) -> dict[str, str | int]:
        """The ids that are known, by name (a new dict: the caller may change it)."""
        return self._known.copy()

    @once
    def _known(self) -> dict[str, str | int]:
        # Asked for five times or more per event (its identity, the answer, the stored text, the
        # bodies): worked out once. Never handed out itself: ``as_dict`` gives a copy.
        out: dict[str, str | int] = {}
        if self.imdb is not None:
            out["imdb"] = self.imdb
        if self.tmdb is not None:
            out["tmdb"] = self.tmdb
        if self.tvdb is not None:
            out["tvdb"] = self.tvdb
        if self.trakt is not None:
            out["trakt"] = self.trakt
        return out

    def __bool__(self) -> bool:
        return self.imdb is not None or self.tmdb is not None or self.tvdb is not None or self.trakt is not None


_IMDB = re.compile(r"(?:tt)?0*(\d{1,10})")


NO_IDS = Ids()  # frozen: one shared "no ids", not a new one per lookup that finds none


def normalize_imdb(value: Any) -> str | None:
    if not isinstance(value, (str, int)) or isinstance(value, bool) or (
            isinstance(value, int) and not 0 < value <= MAX_ID):
        return None
    text = str(value).strip().lower()
    m = _IMDB.fullmatch(text)
    if not m:
        return None
    digits = m.group(1)
    return "tt" + digits.zfill(7)


def normalize_numeric_id(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value if 0 < value <= MAX_ID else None
    if isinstance(value, float):
        return int(value) if value.is_integer() and 0 < value <= MAX_ID else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.isascii() and text.isdigit() and len(text) <= 19:
        number = int(text)
        return number if 0 < number <= MAX_ID else None
    return None


def make_ids(imdb: Any = None, tmdb: Any = None, tvdb: Any = None, trakt: Any = None) -> Ids:
    if imdb is None and tmdb is None and tvdb is None and trakt is None:
        return NO_IDS  # most lookups find nothing
    return Ids(
        imdb=normalize_imdb(imdb),
        tmdb=normalize_numeric_id(tmdb),
        tvdb=normalize_numeric_id(tvdb),
        trakt=normalize_numeric_id(trakt),
    )


@quick_init
@dataclass(frozen=True)
class Event:
    source: Source
    action: Action
    kind: Kind
    title: str | None = None
    year: int | None = None
    ids: Ids = field(default_factory=Ids)
    show_title: str | None = None
    show_year: int | None = None
    show_ids: Ids = field(default_factory=Ids)
    season: int | None = None
    number: int | None = None
    number_abs: int | None = None  # absolute episode number, when that is what the server means
    number_end: int | None = None  # last episode of a multi-episode file (number..number_end)
    progress: float | None = None  # percent 0..100, None = unknown
    duration_s: float | None = None
    paused: bool | None = None  # Jellyfin progress reports carry the paused flag
    user_name: str | None = None
    user_id: str | None = None
    user_uuid: str | None = None  # Plex account uuid (from the avatar URL)
    server_id: str | None = None
    player_id: str | None = None
    item_key: str = ""  # the media server's id of the item
    rating: int | None = None  # for `rate`: 1..10, None = rating cleared
    received_at: float = 0.0
    # the Trakt accounts routing sent it to at ingest (docs/configuration.md, Households)
    accounts: tuple[str, ...] = ()
    vod: bool = False  # Plex's own free streaming catalogue (tv.plex.provider.vod)

    def sent_to(self, accounts: tuple[str, ...]) -> Event:
        """This event routed to ``accounts``: a copy that skips ``dataclasses.replace``'s
        ``__init__`` (a tenth of its cost; every field is already valid)."""
        twin = object.__new__(Event)
        kept = twin.__dict__
        kept.update(self.__dict__)
        # The fields alone: a value kept by ``once`` was worked out from this event's fields, and
        # the twin works out its own (routing reads none of them before it makes the twin).
        for name in _KEPT:
            kept.pop(name, None)
        object.__setattr__(twin, "accounts", accounts)
        return twin

    @property
    def user_key(self) -> str:
        return f"{self.source}|{self.user_id or (self.user_name or '').casefold()}"

    # identity, session_key and the label are asked for several times per event (the answer, the
    # rules, the decision line, the journal): made once each. The fields they read never change
    # (frozen).
    @once
    def identity(self) -> str:
        """What the item is, independent of who plays it where."""
        if self.kind == "episode" and not self.ids and self.show_title is not None:
            show = self.show_ids.as_dict() or (self.show_title or "").casefold()
            key = f"episode|{show}|{self.season}|{self.number}"
            if self.number_end is not None:
                key += f"-{self.number_end}"
            return key if self.number_abs is None else f"{key}|abs={self.number_abs}"
        ids = self.ids.as_dict()
        if ids:
            return f"{self.kind}|" + ",".join(f"{k}={ids[k]}" for k in sorted(ids))
        return f"{self.kind}|{(self.title or '').casefold()}|{self.year}|{self.item_key}"

    @once
    def session_key(self) -> str:
        """One viewing session: source + user + player + item."""
        return f"{self.user_key}|{self.player_id or '-'}|{self.item_key or self.identity}"

    def label(self) -> str:
        return self._label

    @once
    def _label(self) -> str:
        if self.kind == "episode":
            show = self.show_title or "?"
            if self.number is None and self.number_abs is not None:
                return f"{show} #{self.number_abs}"
            end = f"-E{self.number_end:02d}" if self.number_end is not None else ""
            return f"{show} S{self.season or 0:02d}E{self.number or 0:02d}{end}"
        return f"{self.title or '?'} ({self.year})" if self.year else (self.title or "?")

    def summary(self) -> dict[str, Any]:
        """What the 202 answer shows a curl user: what was understood."""
        out: dict[str, Any] = {
            "source": self.source,
            "action": self.action,
            "kind": self.kind,
            "title": self.title,
            "year": self.year,
            "ids": self.ids.as_dict(),
            "progress": None if self.progress is None else round(self.progress, 2),
            "user": self.user_name,
            "session": self.session_key,
        }
        if self.kind == "episode":
            out.update(
                show={"title": self.show_title, "year": self.show_year, "ids": self.show_ids.as_dict()},
                season=self.season,
                number=self.number,
            )
            if self.number_abs is not None:
                out["number_abs"] = self.number_abs
            if self.number_end is not None:
                out["number_end"] = self.number_end
        if self.action == "rate":
            out["rating"] = self.rating
        if self.accounts:
            out["accounts"] = list(self.accounts)
        if self.paused is not None:
            out["paused"] = self.paused
        if self.vod:
            out["vod"] = True
        return out

    def to_dict(self) -> dict[str, Any]:
        mine = self.__dict__  # every field is there (frozen records: cwhook/kernel/records.py)
        data = {name: mine[name] for name in _NAMES}  # asdict's deep copy is slow
        data["ids"] = self.ids.as_dict()
        data["show_ids"] = self.show_ids.as_dict()
        return data

    @once
    def stored(self) -> str:
        """The event as the store writes it (``to_dict`` as JSON): the inbox row and the outbox
        row of one event are the same text, made once."""
        return jsontext.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["ids"] = Ids(**data.get("ids") or {})
        values["show_ids"] = Ids(**data.get("show_ids") or {})
        values["accounts"] = tuple(data.get("accounts") or ())
        return cls(**values)


_FIELDS = fields(Event)
_NAMES = tuple(f.name for f in _FIELDS)
_KEPT = tuple(name for name, value in vars(Event).items() if isinstance(value, once))
ParseResult = Event | Ignored
