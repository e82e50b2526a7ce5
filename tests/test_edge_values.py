"""Hostile values in payloads: numbers read with limits, text made encodable at ingest (pure)."""

from __future__ import annotations

import json
import random
import sqlite3
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cwhook.ingest.multipart import PartScanner
from cwhook.kernel.event import BadPayload, Event, Ignored, normalize_imdb, normalize_numeric_id
from cwhook.scrobble.rules import MAX_NAMES, Rules
from cwhook.sources import emby, jellyfin, plex
from cwhook.sources.payload import as_float, as_int, as_str, loads_object, safe_text
from tests import fuzzkit
from tests.conftest import fixture_json

PARSERS = {"plex": plex.parse, "jellyfin": jellyfin.parse, "emby": emby.parse}
BIG = "9" * 400


def short_id(value: Any) -> str:
    return type(value).__name__ + (f"{len(value)}" if isinstance(value, (str, list, dict)) else "")


@pytest.mark.parametrize(("raw", "expected"), [
    ("12", 12), ("-3", -3), ("9" * 19, int("9" * 19)), ("9" * 20, None), ("1" * 5000, None),
    (BIG, None), ("NaN", None), ("Infinity", None), ("-Infinity", None), ("1e999", float("inf")),
])
def test_json_numbers_are_read_with_limits(raw: str, expected: Any) -> None:
    assert loads_object('{"v": ' + raw + "}")["v"] == expected


@pytest.mark.parametrize("value", [int(BIG), -int(BIG), float("nan"), float("inf"), "1" * 5000, "1e999",
                                   "nan", "Infinity", "\ud800", [], {}, True], ids=short_id)
def test_loose_readers_never_raise(value: Any) -> None:
    assert as_float(value) is None
    assert as_int(value) is None


def test_as_str_of_huge_ints_and_surrogates() -> None:
    assert as_str(10**30) is None
    assert as_str(10**5000) is None
    assert as_str("a\ud800b") == "a\ufffdb"
    assert as_str(12) == "12"


@pytest.mark.parametrize("value", ["1" * 5000, "9" * 20, 10**5000, 2**63, -5, 0, 0.5, float("inf"), float("nan"),
                                   "", "٣", "²", None, True, [1], {"a": 1}], ids=short_id)
def test_numeric_ids_refuse_bad_values(value: Any) -> None:
    assert normalize_numeric_id(value) is None


def test_numeric_ids_keep_good_values() -> None:
    assert normalize_numeric_id("123") == 123
    assert normalize_numeric_id(2**63 - 1) == 2**63 - 1
    assert normalize_numeric_id(7.0) == 7


@pytest.mark.parametrize("value", [10**5000, "tt" + "1" * 5000, 2**64, [1], {"x": 1}, 1.5, True], ids=short_id)
def test_imdb_ids_refuse_bad_values(value: Any) -> None:
    assert normalize_imdb(value) is None


def test_lone_surrogates_are_replaced_at_ingest() -> None:
    data = loads_object('{"a\\ud800": ["\\udfff", {"k": "x\\ud800y"}], "ok": "\\ud83d\\ude00"}')
    assert data == {"a\ufffd": ["\ufffd", {"k": "x\ufffdy"}], "ok": "\U0001f600"}
    assert safe_text("plain") == "plain"


def _evil_doc(server: str, name: str, value: str) -> bytes:
    doc = fixture_json(name)
    text = json.dumps(doc)
    for key in ("title", "Name", "year", "ProductionYear", "ratingKey", "ItemId", "Id", "ProviderIds",
                "grandparentTitle", "SeriesName", "RunTimeTicks", "viewOffset", "Guid", "id"):
        text = text.replace(f'"{key}": ', f'"{key}": {value}, "{key}_was": ', 1)
    return text.encode()


@pytest.mark.parametrize(("server", "name"), [
    ("plex", "plex_media.scrobble_movie.json"), ("plex", "plex_media.scrobble_episode.json"),
    ("jellyfin", "jellyfin_PlaybackStop_movie.json"), ("emby", "emby_playback.stop_movie.json"),
])
@pytest.mark.parametrize("value", [BIG, "1" * 5000, '"' + "1" * 5000 + '"', "NaN", "-Infinity", '"\\ud800"',
                                   '"\\udfffx"', "1e999", '{"imdb": "tt' + "1" * 5000 + '", "Tmdb": ' + BIG + "}"],
                         ids=lambda v: v[:12])
def test_hostile_values_in_every_sample_field(server: str, name: str, value: str) -> None:
    body = _evil_doc(server, name, value)
    try:
        result = PARSERS[server]("application/json", body, 0.0)
    except BadPayload:
        return
    _assert_safe(result)


def _assert_safe(result: Event | Ignored) -> None:
    """What a parser returns can be written anywhere: JSON, UTF-8 logs, SQLite."""
    if isinstance(result, Ignored):
        result.detail.encode("utf-8")
        return
    for text in (json.dumps(result.to_dict(), ensure_ascii=False), json.dumps(result.summary(), ensure_ascii=False),
                 result.label(), result.session_key, result.identity):
        text.encode("utf-8")
    with sqlite3.connect(":memory:") as db:
        db.execute("create table t (v text)")
        db.execute("insert into t values (?)", (json.dumps(result.to_dict(), ensure_ascii=False),))
    assert Event.from_dict(json.loads(json.dumps(result.to_dict()))) == result


@settings(max_examples=400, deadline=None)
@given(server=st.sampled_from(list(PARSERS)), seed=st.integers(0, 2**32))
def test_mutated_samples_parse_or_refuse_cleanly(server: str, seed: int) -> None:
    rnd = random.Random(seed)
    doc = json.loads(rnd.choice(fuzzkit.SAMPLES[server]).read_bytes())
    body = fuzzkit.mutate_json(doc, rnd, server)
    try:
        result = PARSERS[server](rnd.choice(["application/json", "text/plain", ""]), body, 0.0)
    except BadPayload as exc:
        assert len(str(exc)) <= 303
        str(exc).encode("utf-8")
        return
    _assert_safe(result)


def test_details_are_short() -> None:
    body = json.dumps({"event": "x" * 100000, "Metadata": {}}).encode()
    result = plex.parse("application/json", body, 0.0)
    assert isinstance(result, Ignored) and len(result.detail) <= 303
    assert len(str(BadPayload("y" * 10000))) <= 303


def test_multipart_scanner_reports_what_it_holds() -> None:
    scanner = PartScanner("multipart/form-data; boundary=b", "payload")
    assert scanner.feed(b'--b\r\nContent-Disposition: form-data; name="thumb"\r\n\r\n' + b"x" * 100000) is None
    assert scanner.held < 100  # a skipped part: only a tail to find the boundary in
    assert scanner.feed(b'\r\n--b\r\nContent-Disposition: form-data; name="payload"\r\n\r\n' + b"y" * 5000) is None
    assert 4900 < scanner.held < 5100  # the wanted part so far
    assert scanner.feed(b"\r\n--b--\r\n") == b"y" * 5000


def test_watched_list_is_bounded() -> None:
    from cwhook.config.schema import ScrobbleConfig

    rules = Rules(ScrobbleConfig(), max_sessions=50)
    base = fixture_json("plex_media.scrobble_movie.json")
    for i in range(1000):
        event = Event(source="plex", action="stop", kind="movie", title=f"movie {i}", progress=97.0,
                      user_name="u", item_key=str(i), received_at=float(i))
        rules.handle(event, float(i))
    assert len(rules._watched) == 50 * MAX_NAMES  # entries are names, a few per item
    assert base  # the sample is only a reminder of the shape
