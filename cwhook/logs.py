"""structlog set-up: readable console lines on a TTY, JSON lines otherwise (journald)."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


class _Stderr:
    """Writes each line to whatever sys.stderr is at that moment (tests swap it)."""

    def msg(self, message: str) -> None:
        sys.stderr.write(message + "\n")  # stderr is line-buffered: one write, one line

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _stderr_factory(*_: Any) -> _Stderr:
    return _Stderr()


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """(Re)configure logging; safe to call again on reload."""
    global _generation
    _generation += 1
    out = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream) if stream else _stderr_factory,
        cache_logger_on_first_use=False,
    )
    # aiohttp and asyncio log through the standard library: send their warnings
    # and errors the same way, never their access lines (those carry tokens).
    logging.basicConfig(level=logging.WARNING, stream=out, format="%(levelname)s %(name)s: %(message)s",
                        force=True)
    logging.getLogger("aiohttp.access").disabled = True


_generation = 0  # bumped by every configure(): loggers re-bind once after it


class _Logger:
    """A module-level logger that binds once per configuration, not once per call.

    structlog's lazy proxy binds on every call unless loggers are cached for good,
    and cached loggers would keep an old level after a reload.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._generation = -1
        self._bound: Any = None

    def __getattr__(self, attr: str) -> Any:
        if self._generation != _generation:
            self._bound = structlog.get_logger(self._name).bind()
            self._generation = _generation
        return getattr(self._bound, attr)


def get(name: str) -> Any:
    return _Logger(name)
