"""Reload the model catalog file on SIGHUP and when it changes.

The file's identity (modification time in ns, size, inode) is checked every ``poll_s`` seconds: no
file-watching dependency, and an editor's write-and-rename is seen like an in-place write. SIGHUP
reloads at once (the handler is installed when serving from the main thread, as ``observatory
serve`` does). A file that does not parse or validate is logged and counted, and the catalog
already serving stays; it is read again at its next change.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

from loguru import logger
from opentelemetry import metrics

from gpt_observatory.serving_hooks import catalog as catalog_file
from gpt_observatory.serving_hooks._catalog_router import CatalogRouter
from gpt_observatory.serving_hooks.settings import ServeSettings
from gpt_observatory.telemetry import names
from gpt_observatory.telemetry.settings import ConfigError

_Stamp = tuple[int, int, int] | None


def file_stamp(path: Path) -> _Stamp:
    """A file's identity for change polling (mtime, size, inode; None while it is missing): an edit in
    place, a rename over it and a new file of the same mtime all change it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class CatalogReloader:
    """Watches ``path`` for ``router`` (see the module docstring); :meth:`start` and :meth:`close` run
    in the app's lifespan."""

    def __init__(self, router: CatalogRouter, path: Path, settings: ServeSettings, poll_s: float = 2.0,
                 on_reload: Callable[[], None] | None = None) -> None:
        self.router = router
        self.on_reload = on_reload  # called after each catalog served (the metering checks its prices against it)
        self.path = Path(path)
        self.settings = settings
        self.poll_s = poll_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stamp: _Stamp = None
        self._signal = False
        m = names.CATALOG_RELOADS
        self._reloads = metrics.get_meter(__name__).create_counter(m.name, m.unit, m.description)

    async def start(self) -> None:
        self._stamp = file_stamp(self.path)
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError, AttributeError):
            loop.add_signal_handler(signal.SIGHUP, self._wake.set)  # main thread only
            self._signal = True
        if not self._signal:
            logger.debug("catalog reload on SIGHUP needs the main thread; {} is watched for changes only", self.path)
        self._task = asyncio.create_task(self._watch(), name="catalog-reload")

    async def close(self) -> None:
        if self._signal:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._signal = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            asked = self._wake.is_set()
            self._wake.clear()
            stamp = file_stamp(self.path)
            if asked or stamp != self._stamp:
                self._stamp = stamp
                await self.reload()

    async def reload(self) -> str:
        """Read the file and serve it; the outcome (``ok``, ``invalid``, ``failed``) is counted."""
        try:
            new = await asyncio.to_thread(catalog_file.load, self.path, self.settings)
        except ConfigError as e:
            logger.error("catalog reload refused: {}; the previous catalog keeps serving", e)
            outcome = "invalid"
        else:
            outcome = await self.router.reload(new)
        if outcome == "ok" and self.on_reload is not None:
            self.on_reload()
        self._reloads.add(1, {names.CATALOG_RELOAD_OUTCOME: outcome})
        return outcome
