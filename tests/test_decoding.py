"""The fast JSON decoder (orjson) reads every body exactly as the standard decoder with the
edge's rules does: the same values, the same errors (pure, hypothesis)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cwhook.kernel.event import BadPayload
from cwhook.sources import payload
from cwhook.sources.payload import Caseless, get_ci, loads_object, loads_object_stdlib
from tests import fuzzkit
from tests.conftest import FIXTURES

HOSTILE_NUMBERS = ["9" * 19, "9" * 20, "-" + "9" * 19, "-" + "9" * 20, "18446744073709551615",
                   "18446744073709551616", "9" * 400, "1e400", "-1e400", "1e-400", "NaN", "Infinity",
                   "-Infinity", "0.12345678901234567890123", "-0", "1E5", "3.0"]
HOSTILE_STRINGS = ['"\\ud800"', '"\\udfff x"', '"\\ud83d\\ude00"', '"\\u0000"', '"é"', '"\\"\\\\"']

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**25), max_value=10**25),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8), inner, max_size=4), max_leaves=20)


def outcome(decode: Any, raw: bytes) -> tuple[str, Any]:
    try:
        return "ok", decode(raw)
    except BadPayload as exc:
        return "bad", str(exc)


def same(raw: bytes) -> None:
    fast, slow = outcome(loads_object, raw), outcome(loads_object_stdlib, raw)
    # NaN is read as absent by both; compare through JSON so floats compare as written
    assert json.dumps(fast, sort_keys=True) == json.dumps(slow, sort_keys=True), raw[:200]


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=8), values, max_size=6), st.sampled_from([None, 0, 2]))
def test_generated_objects_decode_the_same(data: dict[str, Any], indent: int | None) -> None:
    same(json.dumps(data, indent=indent).encode())
    same(json.dumps(data, ensure_ascii=False).encode())


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), values, max_size=6), st.data())
@example({"a": 1}, None)
def test_mutated_bodies_decode_the_same(data: dict[str, Any], draw: Any) -> None:
    raw = bytearray(json.dumps(data).encode())
    if draw is not None and raw:
        for _ in range(draw.draw(st.integers(0, 3))):
            at = draw.draw(st.integers(0, len(raw) - 1))
            raw[at] = draw.draw(st.integers(0, 255))
    same(bytes(raw))


@pytest.mark.parametrize("number", HOSTILE_NUMBERS)
@pytest.mark.parametrize("text", HOSTILE_STRINGS)
def test_hostile_numbers_and_strings_decode_the_same(number: str, text: str) -> None:
    same(f'{{"n": {number}, "s": {text}, "l": [{number}, {{"k": {text}}}]}}'.encode())
    same(f'\ufeff{{"n": {number}}}'.encode())


def test_real_payloads_and_fuzz_corpus_decode_the_same() -> None:
    bodies = [path.read_bytes() for path in sorted(FIXTURES.rglob("*.json"))]
    assert len(bodies) > 10
    for body in bodies:
        same(body)
    rnd = random.Random(5)
    docs = [json.loads(b) for b in bodies]
    for i in range(3000):
        doc = docs[i % len(docs)]
        mutated = fuzzkit.mutate_json(doc, rnd, rnd.choice(["plex", "emby", "jellyfin"]))
        same(mutated)
        same(fuzzkit.mangle_bytes(mutated, rnd))


@given(st.lists(st.tuples(st.sampled_from(["Name", "name", "NAME", "nAmE", "Year", "year", "Id", "ID", "x", "İd"]),
                          st.integers()), max_size=8),
       st.sampled_from(["Name", "name", "NAME", "Year", "YEAR", "id", "Id", "x", "X", "missing", "İd", "i̇d"]))
def test_a_caseless_object_answers_as_the_scan_does(pairs: list[tuple[str, int]], key: str) -> None:
    data = dict(pairs)
    assert get_ci(Caseless(data), key) == get_ci(data, key)
    assert get_ci(Caseless(data), key) == get_ci(data, key)  # the layout's map, now kept, answers the same


def test_the_key_layouts_kept_are_bounded_in_number_and_size() -> None:
    """A server sends one layout again and again: its map is kept. A hostile body's keys are not
    kept (a megabyte of them), and at most MAX_LAYOUTS layouts are."""
    payload._SPELLINGS.clear()
    huge = Caseless({f"Key{i}": i for i in range(payload.MAX_LAYOUT_KEYS + 1)})
    assert get_ci(huge, "key7") == 7 and payload._SPELLINGS == {}
    long = Caseless({"K" * (payload.MAX_LAYOUT_TEXT + 1): 1, "Name": 2})
    assert get_ci(long, "name") == 2 and get_ci(long, "k" * (payload.MAX_LAYOUT_TEXT + 1)) == 1
    assert payload._SPELLINGS == {}
    for i in range(payload.MAX_LAYOUTS + 10):
        assert get_ci(Caseless({f"Name{i}": i, "Year": 1}), f"name{i}") == i
        assert len(payload._SPELLINGS) <= payload.MAX_LAYOUTS
    same = Caseless({"Name0": 0, "Year": 1})
    get_ci(same, "year")
    again = Caseless({"Name0": 5, "Year": 6})
    assert get_ci(again, "year") == 6 and again.spelling() is same.spelling()
