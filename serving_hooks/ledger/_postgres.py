"""The PostgreSQL ledger store: table ``usage`` partitioned by month on ``time``.

Each batch is one transaction of ``INSERT ... ON CONFLICT DO NOTHING`` (psycopg2's ``execute_values``):
a batch retried after a lost answer or a restart changes nothing. The primary key is
``(request_id, time)`` (a partitioned table's key must hold the partition key); a row keeps the time
it was spooled with, so a retry meets its own key. The month's partition (``usage_YYYY_MM``) is made
before the first row of that month is written; retention is dropping (or detaching) old partitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

from gpt_observatory.serving_hooks.ledger._row import COLUMNS, VALUES, UsageRow

_TYPES = {
    "request_id": "text NOT NULL", "time": "timestamptz NOT NULL", "tenant": "text NOT NULL",
    "route": "text NOT NULL", "outcome": "text NOT NULL", "status": "integer NOT NULL",
    "input_tokens": "bigint NOT NULL", "output_tokens": "bigint NOT NULL", "cached_tokens": "bigint",
    "stream": "boolean NOT NULL", "latency_s": "double precision NOT NULL", "ttft_s": "double precision",
    "price_input_micro_per_1m": "bigint", "price_output_micro_per_1m": "bigint", "cost_micro": "bigint",
    "gpu_seconds": "double precision", "gpu_joules": "double precision", "billable": "boolean NOT NULL",
    "shadow": "boolean NOT NULL",
}
# What a column added to an existing table gets: NOT NULL columns need a default there.
_ADDED_DEFAULTS = {"billable": "true", "shadow": "false", "stream": "false", "input_tokens": "0",
                   "output_tokens": "0", "latency_s": "0"}
_INSERT = f"INSERT INTO usage ({', '.join(COLUMNS)}) VALUES %s ON CONFLICT (request_id, time) DO NOTHING"


def _connect(url: str):
    import psycopg2

    return psycopg2.connect(url, connect_timeout=5)


class PostgresStore:
    """One connection, (re)opened on demand: a failed batch closes it, the next opens a new one."""

    placeholder = "%s"
    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn = None
        self._months: set[str] = set()

    def _db(self):
        if self._conn is None or self._conn.closed:
            self._conn = _connect(self.url)
            self._months.clear()
            with self._conn, self._conn.cursor() as cur:
                cols = ", ".join(f"{c} {_TYPES.get(c, 'text')}" for c in COLUMNS)
                cur.execute(f"CREATE TABLE IF NOT EXISTS usage ({cols}, PRIMARY KEY (request_id, time)) "
                            "PARTITION BY RANGE (time)")
                _migrate(cur)
        return self._conn

    def insert(self, rows: Sequence[UsageRow]) -> int:
        """Write ``rows`` in one transaction; returns how many were new. Raises on any failure (the
        connection is dropped, the rows stay in the spool)."""
        from psycopg2.extras import execute_values

        try:
            conn = self._db()
            with conn, conn.cursor() as cur:
                for month in {r.time[:7] for r in rows} - self._months:
                    cur.execute(_partition(month))
                execute_values(cur, _INSERT, [VALUES(r) for r in rows],
                               page_size=max(1, len(rows)))
                added = cur.rowcount
            self._months.update(r.time[:7] for r in rows)
            return added
        except Exception:
            self.close()
            raise

    def query(self, sql: str, params: Sequence[object]) -> list[tuple]:
        conn = self._db()
        with conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


def _migrate(cur: Any) -> None:
    """Add the columns a table made by an earlier version lacks (``billable``: existing rows are billable);
    the partitions take them too. Only missing ones are altered (an ALTER takes the table's lock)."""
    cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = 'usage'")
    have = {r[0] for r in cur.fetchall()}
    for column in (c for c in COLUMNS if c not in have):
        kind = _TYPES.get(column, "text")
        default = _ADDED_DEFAULTS.get(column)
        if default is None:
            kind = kind.replace(" NOT NULL", "")
        cur.execute(f"ALTER TABLE usage ADD COLUMN IF NOT EXISTS {column} {kind}"
                    + (f" DEFAULT {default}" if default is not None else ""))


def _partition(month: str) -> str:
    """DDL for the partition of ``month`` ('YYYY-MM')."""
    year, mon = int(month[:4]), int(month[5:7])
    start = date(year, mon, 1)
    end = date(year + mon // 12, mon % 12 + 1, 1)
    return (f"CREATE TABLE IF NOT EXISTS usage_{year:04d}_{mon:02d} PARTITION OF usage "
            f"FOR VALUES FROM ('{start} 00:00:00+00') TO ('{end} 00:00:00+00')")
