"""structlog set-up: readable console lines on a TTY, JSON lines otherwise (journald).

JSON is written as UTF-8 (titles stay readable, no ``\\u`` escapes). Under systemd
(``JOURNAL_STREAM`` names our stderr) every line starts with its syslog priority
(``<3>`` error ... ``<7>`` debug), so ``journalctl -p err`` works.
The standard library's records (aiohttp, asyncio) go through the same chain.

The chain, in order: ``_pre_chain()`` (context, level, time, exceptions, then the
``redact.Scrubber`` that sees every event dict of both sources), then the renderer,
then the priority prefix. ``Logging`` is the process's set-up (its scrubber, the
journal stream systemd named): the CLI makes it, the daemon reconfigures through it.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import json
import logging
import os
import sys
import time
import weakref
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson

from cwhook.kernel import redact
from cwhook.kernel.termtext import visible

# structlog is imported where a line is configured or written, not here: importing it pulls in
# `rich` when that is installed (structlog.dev), which the CLI commands that log nothing need not
# pay for at every start.

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}

# Syslog priorities by structlog method name / stdlib level name.
PRIORITY = {"critical": 2, "fatal": 2, "exception": 3, "error": 3, "warning": 4, "warn": 4,
            "notice": 5, "info": 6, "debug": 7}

Processor = Callable[[Any, str, MutableMapping[str, Any]], Any]


class _Stderr:
    """Writes each line to whatever sys.stderr is at that moment (tests swap it), or to the lines
    ``gathered`` holds."""

    def msg(self, message: str) -> None:
        if _gathered is not None:
            _gathered.append(message)
            return
        sys.stderr.write(message + "\n")  # stderr is line-buffered: one write, one line

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


_gathered: list[str] | None = None


@contextlib.contextmanager
def gathered() -> Iterator[None]:
    """The lines written to stderr meanwhile go out together, in one write when the block ends.

    For a block that runs without a pause (no ``await``), such as the worker deciding a batch:
    its decision lines leave in one system call instead of one each (docs/performance.md). The
    lines and their order are the same; they only leave a few microseconds later. A block inside
    another writes with the outer one."""
    global _gathered
    if _gathered is not None:
        yield
        return
    _gathered = []
    try:
        yield
    finally:
        lines, _gathered = _gathered, None
        if lines:
            sys.stderr.write("\n".join(lines) + "\n")


def _stderr_factory(*_: Any) -> _Stderr:
    return _Stderr()


def under_journald(out: TextIO, value: str) -> bool:
    """systemd connected this output to the journal.

    As systemd.exec(5) asks, JOURNAL_STREAM (``device:inode``, the ``value`` given) is
    compared with the stream itself: a program started from a service inherits the
    variable while its output may go elsewhere (a terminal, a file, a pipe).
    """
    try:
        st = os.fstat(out.fileno())
    except (OSError, ValueError, AttributeError):
        return False  # not a real file (tests' StringIO)
    return value == f"{st.st_dev}:{st.st_ino}"


def _syslog_prefix(_: Any, method_name: str, rendered: Any) -> Any:
    level = method_name if method_name in PRIORITY else "info"
    return f"<{PRIORITY[level]}>{rendered}"


def _visible_values(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Console lines go to a terminal: titles and names from outside get their control characters
    escaped (cwhook/kernel/termtext.py), so a title cannot move the cursor or forge a line. structlog's
    console renderer prints a value with a space, a tab, ``=``, a quote, CR or LF as its ``repr``
    (escaped already) and any other value as it is: those are escaped here. The traceback keeps
    its line breaks; the renderer's own colours are added after this."""
    for key, value in event.items():
        if isinstance(value, str) and key != "exception" and not _REPRESENTED & set(value):
            event[key] = visible(value)
    return event


_REPRESENTED = frozenset(" \t=\r\n\"'")


# Values orjson would write its own way go to ``default`` (``repr``), as with json.dumps. Subclasses
# of str, int, dict and list are written as their base type, as json.dumps writes them (a config
# problem is a str subclass: it must read as text, not as its repr).
_OWN_WAY = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def _json_line(_: Any, __: str, event: MutableMapping[str, Any]) -> str:
    """The event as one JSON line, UTF-8 as it is (no ``\\u`` escapes): orjson, a few times
    faster than json.dumps (docs/performance.md); what orjson refuses (a lone surrogate, an
    integer beyond 64 bits) goes through json.dumps."""
    try:
        return orjson.dumps(event, default=repr, option=_OWN_WAY).decode()
    except TypeError:
        return json.dumps(event, ensure_ascii=False, default=repr)


class _Stamp:
    """``timestamp``: the UTC time as ``2026-12-03T09:33:06.086791Z`` (structlog's ISO stamper's
    text), its date and seconds formatted once a second instead of on every line."""

    def __init__(self) -> None:
        self._second = -1
        self._head = ""

    def __call__(self, _: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._head = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event["timestamp"] = f"{self._head}.{int((now - second) * 1e6):06d}Z"
        return event


# The number of the request a line is written for (``request_id``), set by the app's access log
# for the time its handler runs. One variable read per line: structlog's merge_contextvars copies
# and walks the whole context for it, a seventh of a line's cost.
REQUEST_ID: contextvars.ContextVar[int | None] = contextvars.ContextVar("cwhook_request_id", default=None)


def _request_id(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


def _pre_chain(scrubber: redact.Scrubber) -> list[Processor]:
    import structlog

    return [
        _request_id,
        structlog.processors.add_log_level,
        _Stamp(),
        structlog.processors.format_exc_info,
        scrubber,  # no secret in any line
    ]


class _StdlibFormatter(logging.Formatter):
    """Standard library records rendered like ours (same fields, same prefix), by structlog's
    ProcessorFormatter (held, not inherited: a subclass would need structlog at import)."""

    def __init__(self, renderer: Processor, journal: bool, use_json: bool, scrubber: redact.Scrubber) -> None:
        import structlog

        super().__init__()
        self._inner = structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        *([] if use_json else [_visible_values]), renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *_pre_chain(scrubber)])
        self._journal = journal

    def format(self, record: logging.LogRecord) -> str:
        line = self._inner.format(record)
        if self._journal:
            return f"<{PRIORITY.get(record.levelname.lower(), 6)}>{line}"
        return line


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None,
              scrubber: redact.Scrubber | None = None, journal_stream: str = "") -> None:
    """(Re)configure logging; safe to call again on reload. Without a ``scrubber``, lines lose
    no known secret (there are none), only what text from outside cwhook may quote."""
    import structlog

    global _level, _chain
    scrubber = scrubber if scrubber is not None else redact.Scrubber()
    _level = LEVELS.get(level, logging.INFO)
    out = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        _json_line
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    journal = under_journald(out, journal_stream)
    if use_json and stream is None and isinstance(out, io.TextIOWrapper) and out.encoding.lower() != "utf-8":
        out.reconfigure(encoding="utf-8", errors="backslashreplace")  # JSON lines are UTF-8, whatever the locale
    processors = [*_pre_chain(scrubber), *([] if use_json else [_visible_values]), renderer,
                  *([_syslog_prefix] if journal else [])]
    factory = structlog.PrintLoggerFactory(file=stream) if stream else _stderr_factory
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_level),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    _chain = (tuple(processors), factory())
    for logger in list(_LOGGERS):  # each binds again, to the new chain and level, at its next line
        logger.forget()
    # aiohttp and asyncio log through the standard library: send their warnings
    # and errors the same way, never their access lines (those carry tokens).
    handler = logging.StreamHandler(out)
    handler.setFormatter(_StdlibFormatter(renderer, journal, use_json, scrubber))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("aiohttp.access").disabled = True


@dataclass
class Logging:
    """One process's logging: the scrubber every line goes through (the daemon tells it the live
    config's secrets) and JOURNAL_STREAM as the process got it. Made by the CLI."""

    scrubber: redact.Scrubber = field(default_factory=redact.Scrubber)
    journal_stream: str = ""

    def configure(self, level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
        configure(level, fmt, stream, self.scrubber, self.journal_stream)


# The level configure() set: what enabled() answers from. Module-level on purpose, as the loggers
# (_LOGGERS): it mirrors structlog's own configuration, which is one per process
# (structlog.configure), and the loggers are made at import time, before any object of the process.
_level = logging.INFO


def enabled(level: str) -> bool:
    """Lines of ``level`` are written (a caller may skip making a line nobody would see)."""
    return LEVELS[level] >= _level


class _Logger:
    """A module-level logger that binds once per configuration, not once per call.

    structlog's lazy proxy binds on every call unless loggers are cached for good,
    and cached loggers would keep an old level after a reload. A level's method, once bound,
    is kept on the instance (found without ``__getattr__`` and its failed lookup, a seventh of a
    line's cost) until the next ``configure`` makes every logger ``forget`` it.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._bound: Any = None
        _LOGGERS.add(self)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):  # copy, pickle and friends probing: not a logging method
            raise AttributeError(attr)
        if attr in _DIRECT and _chain is not None:
            value = _direct(attr, *_chain) if LEVELS[attr] >= _level else _dropped
            self.__dict__[attr] = value
            return value
        if self._bound is None:
            import structlog

            self._bound = structlog.get_logger(self._name).bind()
        value = getattr(self._bound, attr)
        if attr in PRIORITY:  # a level's method (debug, info, ...): kept until the next configure
            self.__dict__[attr] = value
        return value

    def forget(self) -> None:
        """The configuration changed: bind again at the next line."""
        self.__dict__ = {"_name": self._name, "_bound": None}


_LOGGERS: weakref.WeakSet[_Logger] = weakref.WeakSet()

# The chain configure() gave structlog, and the output it writes to; None before the first configure.
_chain: tuple[tuple[Processor, ...], Any] | None = None
_DIRECT = frozenset(("debug", "info", "warning", "error"))  # `exception` and the rest: structlog's own


def _dropped(event: str, *args: Any, **kw: Any) -> None:
    """A line below the configured level."""


def _direct(name: str, processors: tuple[Processor, ...], out: Any) -> Callable[..., None]:
    """A level's method that runs the configured chain and writes its line itself: what structlog's
    bound logger does for such a call (the same event dict, the same processors in the same order,
    the same output), without its dispatch, a fifth of a line's cost (docs/performance.md).
    ``exception`` and the rest keep structlog's own methods."""
    write = getattr(out, name)

    def line(event: str, *args: Any, **kw: Any) -> None:
        if args:  # as structlog does: ``log.info("%s done", what)``
            event = event % args
        kw["event"] = event  # after the fields, as structlog puts it (the dict is this call's own)
        value: Any = kw
        for proc in processors:
            value = proc(out, name, value)
        write(value)

    return line


def get(name: str) -> Any:
    return _Logger(name)
