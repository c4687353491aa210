"""The usage ledger (issue 17, Deliver 4): one row per request that survives restarts, for billing.

On the request path :class:`LedgerMiddleware` (outside the gateway) appends each completion request's
:class:`UsageRow` to a durable local spool (append-only segment files, :mod:`._spool`) without waiting;
a shipper thread moves them in batches to the store
(:mod:`._sqlite` by default, :mod:`._postgres` for a ``postgresql://`` URL), idempotent by request id.
:mod:`._read` answers ``observatory usage`` and ``GET /admin/usage``.

Wiring (in :func:`serving_hooks.app.create_listeners`)::

    ledger = open_ledger(settings)            # None when ledger_enabled is off
    app = LedgerMiddleware(app, ledger)       # outside the gateway; start()/close() in the lifespan
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gpt_observatory.serving_hooks.ledger._ledger import Ledger
from gpt_observatory.serving_hooks.ledger._middleware import LedgerMiddleware
from gpt_observatory.serving_hooks.ledger._mirror import mirror_recorder, mirror_row
from gpt_observatory.serving_hooks.ledger._row import COLUMNS, UsageRow
from gpt_observatory.serving_hooks.ledger._ship import Store

if TYPE_CHECKING:
    from gpt_observatory.serving_hooks.settings import ServeSettings

__all__ = ["COLUMNS", "Ledger", "LedgerMiddleware", "Store", "UsageRow", "mirror_recorder", "mirror_row",
           "open_ledger", "open_store", "store_location"]


def store_location(settings: ServeSettings) -> str:
    """The store ``settings`` name: ``ledger_url``, else ``<state dir>/ledger.sqlite3``."""
    if settings.ledger_url:
        return settings.ledger_url
    from gpt_observatory.telemetry.settings import state_dir

    return str(state_dir() / "ledger.sqlite3")


def open_store(location: str) -> Store:
    """A store for ``location``: a ``postgresql://`` (or ``postgres://``) URL, else a SQLite file path."""
    if location.startswith(("postgresql://", "postgres://")):
        from gpt_observatory.serving_hooks.ledger._postgres import PostgresStore

        return PostgresStore(location)
    from gpt_observatory.serving_hooks.ledger._sqlite import SqliteStore

    return SqliteStore(Path(location.removeprefix("sqlite:///")))


def open_ledger(settings: ServeSettings) -> Ledger | None:
    """The ledger ``settings`` describe (not started), or None when ``ledger_enabled`` is off."""
    if not settings.ledger_enabled:
        return None
    spool_dir = settings.ledger_spool_dir
    if spool_dir is None:
        from gpt_observatory.telemetry.settings import state_dir

        spool_dir = state_dir() / "ledger-spool"
    return Ledger(
        Path(spool_dir), store_location(settings),
        batch_rows=settings.ledger_batch_rows, ship_interval_s=settings.ledger_ship_interval_s,
        spool_max_mb=settings.ledger_spool_max_mb, spool_sync=settings.ledger_spool_sync,
        commit_wait_s=settings.ledger_commit_wait_s, fsync_interval_s=settings.ledger_fsync_interval_s,
    )
