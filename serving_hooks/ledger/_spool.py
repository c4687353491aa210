"""The durable local spool: SQLite in WAL mode, one transaction per batch of rows.

A row committed here survives the gateway being killed (WAL, ``synchronous=NORMAL``: a process crash
loses nothing committed; ``full`` also fsyncs each batch against power loss). Rows leave the spool only
once the ledger store has them. Several processes (``serve --workers N``) may share one spool: each
write is one short transaction, and shipping is idempotent by request id, so two shippers taking the
same rows never double them. ``max_mb`` bounds the file (SQLite's ``max_page_count``): past it a batch
is refused (``SpoolFull``) and its rows counted as dropped, as on a full disk.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import orjson

from gpt_observatory.serving_hooks.ledger._row import UsageRow

_SCHEMA = ("CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY, request_id TEXT NOT NULL UNIQUE, "
           "added REAL NOT NULL, row BLOB NOT NULL)")


class SpoolError(Exception):
    """The spool could not take a batch (disk full, its size bound, I/O error)."""


def _wal(db: sqlite3.Connection, wait_s: float = 30.0) -> None:
    """WAL mode. Several processes opening one new spool at once (``serve --workers N``) race for it, and
    SQLite answers "database is locked" at once to the losers (the busy timeout does not cover a
    journal-mode change): ask again until the winner is done."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class Spool:
    """One connection to the spool file (use one per thread)."""

    def __init__(self, path: Path, *, max_mb: float | None = None, sync: str = "normal") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        _wal(self._db)
        self._db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        self._db.execute(_SCHEMA)
        if max_mb is not None:
            page = self._db.execute("PRAGMA page_size").fetchone()[0]
            self._db.execute(f"PRAGMA max_page_count={max(2, int(max_mb * (1 << 20) // page))}")

    def append(self, rows: Sequence[UsageRow]) -> None:
        """Commit ``rows`` in one transaction (a request id already there is kept as it was)."""
        now = time.time()
        data = [(r.request_id, now, orjson.dumps(r)) for r in rows]  # orjson writes a dataclass itself
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT OR IGNORE INTO spool (request_id, added, row) VALUES (?, ?, ?)", data)
        except sqlite3.Error as e:
            raise SpoolError(f"ledger spool {self.path}: {e}") from e

    def take(self, limit: int) -> list[tuple[int, UsageRow]]:
        """The oldest ``limit`` rows not yet shipped, with their sequence numbers."""
        cursor = self._db.execute("SELECT seq, row FROM spool ORDER BY seq LIMIT ?", (limit,))
        return [(seq, UsageRow.from_dict(orjson.loads(row))) for seq, row in cursor]

    def remove(self, seqs: Iterable[int]) -> None:
        """Forget rows the store has (after it committed them)."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM spool WHERE seq = ?", [(s,) for s in seqs])

    def backlog(self) -> tuple[int, float]:
        """(rows in the spool, seconds since the oldest was added; 0 when empty)."""
        count, oldest = self._db.execute("SELECT COUNT(*), MIN(added) FROM spool").fetchone()
        return count, (max(0.0, time.time() - oldest) if oldest is not None else 0.0)

    def close(self) -> None:
        self._db.close()
