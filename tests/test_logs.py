from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import TextIO

import pytest

from cwhook.kernel import logs


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore() -> object:
    yield None
    logs.configure("info", "json")


def test_json_lines_when_not_a_tty() -> None:
    out = io.StringIO()
    logs.configure("info", "auto", out)
    logs.get("t").info("decision", reason="sent", progress=12.5)
    line = json.loads(out.getvalue())
    assert line["event"] == "decision" and line["reason"] == "sent" and line["level"] == "info"
    assert line["timestamp"].endswith("Z")


class _Problem(str):
    """A str subclass, as a config problem is."""


def test_text_subclasses_are_written_as_text_as_json_dumps_writes_them() -> None:
    """Whatever the scrubber does (no secret configured here): a str subclass is text in the line,
    an int subclass a number, not their repr."""
    out = io.StringIO()
    logs.configure("info", "json", out)
    logs.get("t").info("config_refused", problem=_Problem("logging: this section is missing"),
                       status=type("Status", (int,), {})(404))
    line = json.loads(out.getvalue())
    assert (line["problem"], line["status"]) == ("logging: this section is missing", 404)


def test_console_on_a_tty() -> None:
    out = Tty()
    logs.configure("info", "auto", out)
    logs.get("t").info("decision", reason="sent")
    text = out.getvalue()
    assert "decision" in text and "reason" in text and "sent" in text
    with pytest.raises(ValueError):
        json.loads(text)


def _events(out: io.StringIO) -> list[str]:
    return [json.loads(x)["event"] for x in out.getvalue().splitlines()]


def test_level_filters() -> None:
    out = io.StringIO()
    logs.configure("warning", "json", out)
    log = logs.get("t")
    log.info("hidden")
    log.warning("shown")
    assert _events(out) == ["shown"]


def test_forced_formats() -> None:
    out = Tty()
    logs.configure("debug", "json", out)
    logs.get("t").debug("x")
    assert json.loads(out.getvalue())["event"] == "x"
    plain = io.StringIO()
    logs.configure("debug", "console", plain)
    logs.get("t").debug("y")
    assert "y" in plain.getvalue() and not plain.getvalue().startswith("{")


def test_non_ascii_is_written_as_utf8_not_escaped() -> None:
    out = io.StringIO()
    logs.configure("info", "json", out)
    logs.get("t").info("decision", title="范马刃牙 – Amélie")
    assert json.loads(out.getvalue())["title"] == "范马刃牙 – Amélie"
    assert "范马刃牙 – Amélie" in out.getvalue() and "\\u" not in out.getvalue()


def journal_file(tmp_path: Path) -> tuple[TextIO, str]:
    """A file, and the JOURNAL_STREAM that names it, as systemd names the journal's stream."""
    fh = (tmp_path / "journal").open("w+", encoding="utf-8")
    st = os.fstat(fh.fileno())
    return fh, f"{st.st_dev}:{st.st_ino}"


def test_syslog_priority_prefix_under_journald(tmp_path: Path) -> None:
    fh, journal_stream = journal_file(tmp_path)
    logs.configure("debug", "auto", fh, journal_stream=journal_stream)
    log = logs.get("t")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("x")
    logging.getLogger("aiohttp.server").error("Error handling request")  # the standard library's too
    logging.getLogger("asyncio").warning("slow callback")
    fh.seek(0)
    lines = fh.read().splitlines()
    prefixes = [line[:3] for line in lines if line.startswith("<")]
    assert prefixes == ["<7>", "<6>", "<4>", "<3>", "<3>", "<3>", "<4>"], lines
    records = [json.loads(line[3:]) for line in lines if line.startswith("<")]
    assert [r["event"] for r in records] == ["d", "i", "w", "e", "x", "Error handling request", "slow callback"]
    assert records[4]["exception"].startswith("Traceback") and records[5]["logger"] == "aiohttp.server"


def test_no_prefix_when_journal_stream_names_another_stream(tmp_path: Path) -> None:
    _, journal_stream = journal_file(tmp_path)  # inherited from a service, but our output goes elsewhere
    other = (tmp_path / "other").open("w+", encoding="utf-8")
    logs.configure("info", "json", other, journal_stream=journal_stream)
    logs.get("t").error("e")
    other.seek(0)
    assert json.loads(other.read())["event"] == "e"


def test_console_lines_escape_control_characters_from_outside() -> None:
    """A title with ESC sequences, CR and LF cannot retitle the terminal or forge a line (issue 18.9)."""
    import re

    out = Tty()
    logs.configure("info", "auto", out)
    logs.get("t").info("decision", item="\x1b]0;owned\x07\rFAKE LINE\nnext\x9b", user="Ev\x1b]0;x\x07il\u202e")
    text = out.getvalue()
    assert "\\x1b]0;owned\\x07\\rFAKE LINE\\nnext\\x9b" in text and "Ev\\x1b]0;x\\x07il\\u202e" in text
    own_colours = re.sub("\x1b\\[[0-9;]*m", "", text)  # the renderer's own SGR sequences
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]", own_colours), text
    assert text.count("\n") == 1 and "\x1b[" in text


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_our_level_methods_write_what_structlog_writes(fmt: str) -> None:
    """The module loggers run the configured chain themselves (cwhook/kernel/logs.py, ``_direct``):
    the same fields in the same order as structlog's own bound logger gives, at every level."""
    import structlog

    out = io.StringIO()
    logs.configure("debug", fmt, out)
    ours, theirs = logs.get("t"), structlog.get_logger("t")
    for level in ("debug", "info", "warning", "error"):
        getattr(ours, level)("decision %s", "made", reason="sent", progress=12.5, item="Futurama S02E15")
        getattr(theirs, level)("decision %s", "made", reason="sent", progress=12.5, item="Futurama S02E15")
    lines = out.getvalue().splitlines()
    assert len(lines) == 8
    for mine, reference in zip(lines[::2], lines[1::2], strict=True):
        if fmt == "json":
            a, b = json.loads(mine), json.loads(reference)
            assert list(a) == list(b) and a["event"] == "decision made"
            assert {k: v for k, v in a.items() if k != "timestamp"} == {
                k: v for k, v in b.items() if k != "timestamp"}
        else:
            assert mine.split(" ", 1)[1] == reference.split(" ", 1)[1]  # all but the time


def test_a_logger_in_use_follows_the_next_configure() -> None:
    out = io.StringIO()
    logs.configure("info", "json", out)
    log = logs.get("t")
    log.info("first")
    log.debug("hidden")
    logs.configure("warning", "json", out)
    log.info("hidden too")
    log.warning("second")
    logs.configure("debug", "json", out)
    log.debug("third")
    assert _events(out) == ["first", "second", "third"]


def test_gathered_lines_leave_together_in_order_even_when_the_block_fails(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    writes: list[str] = []
    monkeypatch.setattr(sys, "stderr", type("W", (), {"write": lambda self, t: writes.append(t) or len(t),
                                                      "isatty": lambda self: False})())
    logs.configure("info", "json")
    log = logs.get("t")
    with pytest.raises(RuntimeError), logs.gathered():
        log.info("one")
        with logs.gathered():  # inside another: leaves with the outer one
            log.warning("two")
        assert writes == []
        raise RuntimeError("the block failed")
    log.info("three")
    assert [[json.loads(x)["event"] for x in w.splitlines()] for w in writes] == [["one", "two"], ["three"]]
