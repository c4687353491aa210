"""The embedded ledger store: a SQLite file (the default, ``<state dir>/ledger.sqlite3``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from gpt_observatory.serving_hooks.ledger._row import COLUMNS, VALUES, UsageRow

_TYPES = {
    "request_id": "TEXT PRIMARY KEY", "time": "TEXT NOT NULL", "tenant": "TEXT NOT NULL", "route": "TEXT NOT NULL",
    "outcome": "TEXT NOT NULL", "status": "INTEGER NOT NULL", "input_tokens": "INTEGER NOT NULL",
    "output_tokens": "INTEGER NOT NULL", "stream": "INTEGER NOT NULL", "latency_s": "REAL NOT NULL",
    "ttft_s": "REAL", "gpu_seconds": "REAL", "gpu_joules": "REAL", "billable": "INTEGER NOT NULL",
    "shadow": "INTEGER NOT NULL", "cached_tokens": "INTEGER", "price_input_micro_per_1m": "INTEGER",
    "price_output_micro_per_1m": "INTEGER", "cost_micro": "INTEGER",
}
# What a column added to an existing table gets: NOT NULL columns need a default there.
_ADDED_DEFAULTS = {"billable": "1", "shadow": "0", "stream": "0", "input_tokens": "0", "output_tokens": "0",
                  "latency_s": "0"}
_INSERT = (f"INSERT OR IGNORE INTO usage ({', '.join(COLUMNS)}) "
           f"VALUES ({', '.join('?' for _ in COLUMNS)})")


class SqliteStore:
    """Rows by request id; inserting one already there changes nothing (a retried batch)."""

    placeholder = "?"
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        cols = ", ".join(f"{c} {_TYPES.get(c, 'TEXT')}" for c in COLUMNS)
        self.db.execute(f"CREATE TABLE IF NOT EXISTS usage ({cols})")
        self._migrate()
        self.db.execute("CREATE INDEX IF NOT EXISTS usage_time ON usage (time)")

    def _migrate(self) -> None:
        """Add the columns a table made by an earlier version lacks (``billable``: existing rows are billable)."""
        def missing() -> list[str]:
            have = {r[1] for r in self.db.execute("PRAGMA table_info(usage)")}
            return [c for c in COLUMNS if c not in have]

        if not missing():  # the usual case: no write lock taken (a reader may open the file read-only)
            return
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")  # one process adds them; the others see them after
            for column in missing():
                kind = _TYPES.get(column, "TEXT")
                default = _ADDED_DEFAULTS.get(column)
                if default is None:
                    kind = kind.replace(" NOT NULL", "")
                self.db.execute(f"ALTER TABLE usage ADD COLUMN {column} {kind}"
                                + (f" DEFAULT {default}" if default is not None else ""))

    def insert(self, rows: Sequence[UsageRow]) -> int:
        """Write ``rows`` in one transaction; returns how many were new."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            before = self.db.total_changes
            self.db.executemany(_INSERT, [VALUES(r) for r in rows])
            return self.db.total_changes - before

    def query(self, sql: str, params: Sequence[object]) -> list[tuple]:
        return self.db.execute(sql, params).fetchall()

    def close(self) -> None:
        self.db.close()
