"""The config watcher: reads the file again when it changes (once it has settled), on SIGHUP,
and every minute while the file on disk is refused; a good read is handed to the daemon.

A read that lacks a section the running config has is refused unless SIGHUP asked for it,
and one that lacks Trakt credentials is refused always (docs/configuration.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from cwhook.config import settle
from cwhook.config.file import ConfigFiles
from cwhook.config.schema import Config, ConfigError, load_config, lost_credentials, lost_sections
from cwhook.kernel import logs
from cwhook.status import snapshot as status

log = logs.get("cwhook.service.watcher")

RELOAD_POLL = 1.0
REFUSED_RETRY = 60.0  # a refused file is read again this often (a chown changes no mtime)

Apply = Callable[[Config, Config, str], None]  # (old, new, reason): the daemon takes a good read


class ConfigWatcher:
    def __init__(self, config: Config, files: ConfigFiles, apply: Apply,
                 poll: float = RELOAD_POLL, refused_retry: float = REFUSED_RETRY) -> None:
        self.config = config
        self.files = files
        self._apply = apply
        self.poll = poll
        self.refused_retry = refused_retry
        self._stamp = settle.stamp(config.path)
        self.error: str | None = None  # why the file on disk is refused (codes and lines), the fix
        self._refused_words: str | None = None  # ... in words, as logged
        self._asked = asyncio.Event()

    def request(self) -> None:
        """SIGHUP: read the file now, removals included."""
        self._asked.set()

    def reload(self, reason: str) -> bool:
        try:
            config = load_config(self.config.path)
            if reason != "SIGHUP":  # a deliberate removal is applied by SIGHUP only
                lost = lost_sections(self.config, config)
                if lost:
                    raise ConfigError(lost)
            lost_app = lost_credentials(self.config, config)
            if lost_app:  # even on SIGHUP: the file is being written (tokens follow the pair rule)
                raise ConfigError(lost_app)
        except ConfigError as exc:
            words = "; ".join(exc.problems)
            if words != self._refused_words:
                for problem in exc.problems:
                    log.error("config_refused", reason=reason, problem=problem,
                              note="keeping the previous settings; the file is read again every minute")
            self._refused_words = words
            # /healthz answers anyone: codes and lines only, never words of the file (docs/configuration.md)
            self.error = status.refused_text(self.config.path, exc.summary())
            return False
        old = self.config
        self.config = config
        self.error = self._refused_words = None
        self.files.remember(config, deliberate=reason == "SIGHUP")  # SIGHUP applies removals on purpose
        self._apply(old, config, reason)
        return True

    async def settled_stamp(self) -> settle.Stamp | None:
        """Wait until the file has settled (cwhook/config/settle.py), at most settle.GIVE_UP seconds."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + settle.GIVE_UP
        stamp = settle.stamp(self.config.path)
        while loop.time() < give_up and (wait := settle.unsettled_for(stamp)) > 0:
            await asyncio.sleep(wait)
            stamp = settle.stamp(self.config.path)
        return stamp

    async def _next_reason(self, last_read: float) -> str | None:
        try:
            await asyncio.wait_for(self._asked.wait(), self.poll)
            self._asked.clear()
            return "SIGHUP"
        except TimeoutError:
            if settle.stamp(self.config.path) != self._stamp:
                return "file changed"
            if self.error is not None and asyncio.get_running_loop().time() - last_read >= self.refused_retry:
                return "retry"
        return None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last_read = loop.time()
        while True:
            reason = await self._next_reason(last_read)
            if reason is None:
                continue
            self._stamp = await self.settled_stamp()
            last_read = loop.time()
            self.reload(reason)
