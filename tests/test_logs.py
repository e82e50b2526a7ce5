from __future__ import annotations

import io
import json

import pytest

from cwhook import logs


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


def test_console_on_a_tty() -> None:
    out = Tty()
    logs.configure("info", "auto", out)
    logs.get("t").info("decision", reason="sent")
    text = out.getvalue()
    assert "decision" in text and "reason" in text and "sent" in text
    with pytest.raises(ValueError):
        json.loads(text)


def test_level_filters() -> None:
    out = io.StringIO()
    logs.configure("warning", "json", out)
    log = logs.get("t")
    log.info("hidden")
    log.warning("shown")
    assert [json.loads(x)["event"] for x in out.getvalue().splitlines()] == ["shown"]


def test_forced_formats() -> None:
    out = Tty()
    logs.configure("debug", "json", out)
    logs.get("t").debug("x")
    assert json.loads(out.getvalue())["event"] == "x"
    plain = io.StringIO()
    logs.configure("debug", "console", plain)
    logs.get("t").debug("y")
    assert "y" in plain.getvalue() and not plain.getvalue().startswith("{")
