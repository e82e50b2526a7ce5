"""quick_init (cwhook/kernel/records.py): the same objects and the same errors as the dataclass's own
__init__, for every kind of field, and for the records the webhook path makes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cwhook.kernel.event import Event, Ids, Ignored
from cwhook.kernel.records import quick_init
from cwhook.scrobble.decision import Decision, Send
from cwhook.sources.mediabrowser import MediaBrowserItem
from cwhook.sources.plex import HamaGuid
from cwhook.state.journal import Arrived, IgnoredRow, Noted
from cwhook.state.schema import NewEntry


def _shape(cls: type) -> type:
    """One class body with every kind of field: required, default, factory, not in __init__,
    keyword-only, and a __post_init__ that reads and rewrites a field."""

    class Shape:
        a: int
        b: str = "b"
        c: list[int] = field(default_factory=list)
        d: int = field(default=7, init=False)
        e: tuple[int, ...] = field(default=(), kw_only=True)
        f: dict[str, int] = field(default_factory=dict, init=False)

        def __post_init__(self) -> None:
            object.__setattr__(self, "b", str(self.b).upper())

    Shape.__name__ = Shape.__qualname__ = cls.__name__
    return Shape


Plain = dataclass(frozen=True)(_shape(type("Plain", (), {})))
Quick = quick_init(dataclass(frozen=True)(_shape(type("Quick", (), {}))))


def _state(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _outcome(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return _state(cls(*args, **kwargs))
    except TypeError:
        return TypeError


values = st.one_of(st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2), st.none())


@given(st.lists(values, max_size=4).map(tuple),
       st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e", "f", "g"]), values, max_size=4))
def test_quick_init_makes_what_the_dataclass_makes_and_refuses_what_it_refuses(
        args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    expected = _outcome(Plain, args, kwargs)
    got = _outcome(Quick, args, kwargs)
    assert got == expected  # the same fields, or a TypeError from both (a missing, extra or doubled argument)


def test_defaults_are_made_anew_for_each_object_and_the_object_stays_frozen() -> None:
    one, two = Quick(1), Quick(2)
    assert one.c is not two.c and one.f is not two.f
    assert (one.b, one.d, one.e) == ("B", 7, ())
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.a = 3  # type: ignore[misc]
    assert Quick(1) == Quick(1) and hash(Quick(1, e=(1,)).e) == hash((1,))
    assert Quick(1).__init__.__qualname__ == "Quick.__init__"


def test_only_frozen_dataclasses_with_a_dict_are_taken() -> None:
    with pytest.raises(TypeError, match="not a frozen dataclass"):
        quick_init(dataclass(type("Loose", (), {"__annotations__": {"a": int}})))

    @dataclass(frozen=True, slots=True)
    class Slotted:
        a: int

    with pytest.raises(TypeError, match="__slots__"):
        quick_init(Slotted)


SAMPLES: list[tuple[type, dict[str, Any]]] = [
    (Ids, {"imdb": "tt0000001", "tmdb": 2}),
    (Ignored, {"reason": "no_ids", "detail": "x" * 400, "user": "u"}),
    (Event, {"source": "plex", "action": "start", "kind": "movie", "title": "T", "accounts": ("a",)}),
    (Arrived, {"at": 1.0, "server": "plex", "session": "s"}),
    (IgnoredRow, {"arrived": Arrived(1.0, "plex"), "reason": "no_ids"}),
    (NewEntry, {"verb": "start", "event": Event("plex", "start", "movie"), "progress": 1.0,
                "created_at": 2.0}),
    (HamaGuid, {"source": "tvdb", "mode": "4", "ids": Ids(tvdb=1), "season": 1, "episode": 2}),
]


@pytest.mark.parametrize(("cls", "kwargs"), SAMPLES, ids=lambda v: getattr(v, "__name__", ""))
def test_the_records_of_the_webhook_path_are_what_the_dataclass_would_make(
        cls: type, kwargs: dict[str, Any]) -> None:
    assert cls.__init__.__module__ == "cwhook.kernel.records" or cls.__init__.__qualname__.endswith(
        f"{cls.__name__}.__init__")
    made = cls(**kwargs)
    reference = object.__new__(cls)
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        object.__setattr__(reference, f.name, kwargs.get(f.name, default))
    if hasattr(cls, "__post_init__"):
        reference.__post_init__()
    assert _state(made) == _state(reference)
    assert made == reference


def test_decisions_and_noted_rows_keep_their_defaults() -> None:
    event = Event("plex", "start", "movie")
    decision = Decision(event, "sent", Send("start", event, 1.0))
    assert (decision.progress, decision.notes) == (None, ())
    noted = Noted(None, Arrived(1.0, "plex"), "sent")
    assert (noted.account, noted.notes, noted.sends) == ("default", (), ())
    item = MediaBrowserItem("jellyfin", "start", "Movie", "N", None, None, Ids(), None, None, None, None,
                            None, None, None, None, None, None, None, None)
    assert item.episode_end is None


def test_an_event_is_stored_as_its_fields_say_even_after_routing() -> None:
    """``Event.stored`` (the inbox's and the outbox's text of an event) is made once per event:
    a routed copy (``sent_to``) and a replaced one are stored with their own accounts and values."""
    import json

    event = Event("plex", "start", "episode", title="T", ids=Ids(tvdb=5), show_title="S", season=1, number=2,
                  progress=12.5, received_at=3.0)
    assert json.loads(event.stored) == {f.name: getattr(event, f.name) if f.name not in ("ids", "show_ids")
                                        else getattr(event, f.name).as_dict() for f in dataclasses.fields(Event)
                                        } | {"accounts": []}
    assert Event.from_dict(json.loads(event.stored)) == event
    routed = event.sent_to(("alice", "bob"))
    assert json.loads(routed.stored)["accounts"] == ["alice", "bob"]
    assert json.loads(event.stored)["accounts"] == []  # the original keeps its own
    again = routed.sent_to(("carol",))
    assert Event.from_dict(json.loads(again.stored)) == again and again.accounts == ("carol",)
    changed = dataclasses.replace(again, progress=50.0)
    assert json.loads(changed.stored)["progress"] == 50.0


def test_once_works_a_value_out_at_its_first_read_and_keeps_it() -> None:
    from cwhook.kernel.records import once

    calls: list[int] = []

    @dataclass(frozen=True)
    class Thing:
        n: int

        @once
        def doubled(self) -> int:
            """Twice n."""
            calls.append(self.n)
            return self.n * 2

    a, b = Thing(1), Thing(2)
    assert (a.doubled, a.doubled, b.doubled, a.doubled) == (2, 2, 4, 2)
    assert calls == [1, 2]  # once per object
    assert a.__dict__["doubled"] == 2 and Thing.doubled.__doc__ == "Twice n."
    assert dataclasses.replace(a, n=5).doubled == 10  # a new object works its own out
    event = Event("plex", "start", "movie", title="T", year=2000)
    assert event.identity == event.__dict__["identity"] == "movie|t|2000|"


@given(st.builds(Ids, imdb=st.none() | st.just("tt0000001"), tmdb=st.none() | st.integers(1, 9),
                 tvdb=st.none() | st.integers(1, 9), trakt=st.none() | st.integers(1, 9)))
def test_ids_known_once_are_handed_out_as_copies(ids: Ids) -> None:
    expected = {k: v for k, v in dataclasses.asdict(ids).items() if v is not None}
    assert bool(ids) is bool(expected)
    first = ids.as_dict()
    assert first == expected
    first["imdb"] = "changed"  # a caller's own dict: the next one is as before
    assert ids.as_dict() == expected and ids == Ids(**expected) and hash(ids) == hash(Ids(**expected))
