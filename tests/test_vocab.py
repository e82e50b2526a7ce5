"""The closed vocabularies (cwhook/kernel/vocab.py) are the one list of each: the code gives only
what they name (mypy checks it), /metrics has a series for each (tests/test_metrics.py), and the
docs list every value (issue 19)."""

from __future__ import annotations

import re

from cwhook.kernel.vocab import CLOSE_REASONS, EDGE_OUTCOMES, ERROR_CODES, OUTCOMES, PROBLEMS
from cwhook.status import snapshot as status
from tests.conftest import ROOT


def section(page: str, heading: str, row: str | None = None) -> str:
    """The part of docs/``page`` under ``heading`` (to the next heading), or its table row
    starting with ``row``."""
    doc = (ROOT / "docs" / page).read_text()
    start = doc.index(heading + "\n")
    end = doc.find("\n#", start + len(heading))
    text = doc[start:end if end > 0 else None]
    if row is None:
        return text
    [line] = [line for line in text.splitlines() if line.startswith(row)]
    return line


def missing(values: tuple[str, ...], text: str, shape: str = "`{}`") -> list[str]:
    return [v for v in values if shape.format(v) not in text]


def test_every_webhook_outcome_and_close_reason_is_documented() -> None:
    """The vocabulary (cwhook/kernel/vocab.py) is the one list: the handler can only give what it
    names (mypy), /metrics has a series for each from the start (tests/test_metrics.py), and the docs
    list each one."""
    assert {"body_timeout", "client_gone", "test", "queued"} <= set(OUTCOMES)
    metrics_row = section("monitoring.md", "## `GET /metrics`", "| `cwhook_webhooks_total` |")
    assert missing(OUTCOMES, metrics_row) == []
    logs_row = section("troubleshooting.md", "## Every log event, and what to do", "| `request` |")
    edge_row = section("troubleshooting.md", "## Every log event, and what to do", "| `protocol_error`")
    assert missing(OUTCOMES, logs_row) == [] and missing(EDGE_OUTCOMES, edge_row) == []
    closed_row = section("monitoring.md", "## `GET /metrics`", "| `cwhook_connections_closed_total` |")
    assert missing(CLOSE_REASONS, closed_row) == []


def written(pattern: str, under: str = "cwhook") -> set[str]:
    return {m for path in (ROOT / under).rglob("*.py") for m in re.findall(pattern, path.read_text())}


def test_every_outcome_and_error_code_written_as_a_plain_string_is_in_the_vocabulary() -> None:
    """What mypy cannot see: ``outcome="..."`` and ``{"error": "..."}`` written as plain strings
    (the edge's log lines and answers)."""
    outcomes = written(r'\boutcome="(\w+)"')
    assert "protocol_error" in outcomes and outcomes - {*OUTCOMES, *EDGE_OUTCOMES} == set()
    codes = written(r'"error": "(\w+)"', "cwhook/ingest")  # the HTTP side
    assert {"expectation_failed", "internal"} <= codes and codes - set(ERROR_CODES) == set()


def test_every_error_code_and_problem_is_documented() -> None:
    answers = section("troubleshooting.md", "## The HTTP answer")
    assert missing(ERROR_CODES, answers, '{{"error": "{}"') == []
    assert missing(PROBLEMS, section("troubleshooting.md", "## /healthz problems"), "`{}") == []  # or `{}:NAME`
    assert list(status.FIXES) == list(PROBLEMS)  # a fix for each, in the order /healthz lists them
