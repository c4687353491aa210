"""The shipper process: a gateway's ledger ships its spool from a child process of its own.

Parsing rows and inserting them into PostgreSQL is CPU work: done by a thread of the gateway, it took
the interpreter lock from the request path (measured: 21-34 % of proxy throughput, bench/ledger.py).
The child (``python -c "...ledger._shipd import main; main()"``) ships every segment nobody writes,
then reports one JSON line per pass on its stdout: rows shipped and dropped, failures, and the backlog
of the segments it could not ship. It reads commands on its stdin (``pass``: ship now; ``close``: a
last pass, then exit) and exits when its stdin ends (the gateway died: what is left ships on the next
start). It ignores SIGINT and SIGTERM (the gateway's Ctrl-C or a group's SIGTERM): its gateway closes it.
It prints nothing else and logs nothing: the gateway logs what it reports, through its redaction, with
the store's failure as a type name only (a database URL may hold a password).

The store's location travels in the environment (``OBSERVATORY_LEDGER_SHIPD``), not on the command
line that ``ps`` shows.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ENV = "OBSERVATORY_LEDGER_SHIPD"


class ShipperProcess:
    """The gateway's handle on its shipper child; restarts it (after ``restart_s``) if it dies."""

    def __init__(self, folder: Path, location: str, meters: Any, *, batch_rows: int, interval_s: float,
                 max_backoff_s: float = 5.0, restart_s: float = 1.0,
                 before_pass: Callable[[], None] = lambda: None) -> None:
        self.meters, self.restart_s, self.before_pass = meters, restart_s, before_pass
        self._config = orjson.dumps({"folder": str(folder), "store": location, "batch_rows": batch_rows,
                                     "interval_s": interval_s, "max_backoff_s": max_backoff_s}).decode()
        self.backlog: tuple[int, float] = (0, 0.0)  # of the segments the child could not ship yet
        self._proc: subprocess.Popen | None = None
        self._asked = 0  # the last ``pass N`` request sent
        self._answered = 0  # the last request a reported pass began after
        self._passed = threading.Condition()
        self._closing = False
        self._failing = False
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self._reader = threading.Thread(target=self._run, name="observatory-ledger-shipd", daemon=True)
        self._reader.start()

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", "from gpt_observatory.serving_hooks.ledger._shipd import main; main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={**os.environ, ENV: self._config}, close_fds=True,
        )

    def _run(self) -> None:
        from loguru import logger

        while not self._closing:
            try:
                proc = self._proc = self._spawn()
            except OSError as e:
                logger.error("ledger: the shipper process cannot start ({}); rows stay in the spool",
                             type(e).__qualname__)
                time.sleep(self.restart_s)
                continue
            assert proc.stdout is not None
            for raw in proc.stdout:
                try:
                    self._report(orjson.loads(raw), logger)
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue
            proc.wait()
            if not self._closing:
                logger.warning("ledger: the shipper process exited ({}); starting another", proc.returncode)
                time.sleep(self.restart_s)

    def _report(self, msg: dict, logger: Any) -> None:
        if msg["shipped"]:
            self.meters.shipped(msg["shipped"])
        for reason, n in msg["dropped"].items():
            self.meters.dropped(reason, n)
        for _ in range(msg["failures"]):
            self.meters.ship_failed()
        if msg["error"] and not self._failing:
            logger.warning("ledger: shipping to the store failed ({}); rows stay in the spool and are retried",
                           msg["error"])
        elif not msg["error"] and self._failing:
            logger.info("ledger: shipping to the store resumed")
        self._failing = bool(msg["error"])
        self.backlog = (int(msg["rows"]), float(msg["lag"]))
        with self._passed:
            self._answered = max(self._answered, int(msg["asked"]))
            self._passed.notify_all()

    def _tell(self, command: str) -> None:
        proc = self._proc
        if proc is not None and proc.stdin is not None and proc.poll() is None:
            try:
                proc.stdin.write(command.encode() + b"\n")
                proc.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass  # it died: the reader starts another

    def drained(self, deadline: float) -> bool:
        """Wait (to the ``time.monotonic()`` deadline) for a pass begun after this call that left nothing
        to ship; True when one did."""
        self.before_pass()
        while time.monotonic() < deadline:
            with self._passed:
                self._asked += 1
                asked = self._asked
            self._tell(f"pass {asked}")  # the child's reports say which request a pass began after
            resend = min(deadline, time.monotonic() + 2.0)  # a child (re)starting may not have seen it
            with self._passed:
                while self._answered < asked and (remaining := resend - time.monotonic()) > 0:
                    self._passed.wait(min(remaining, 0.25))
                if self._answered >= asked and self.backlog[0] == 0:
                    return True
        return False

    def close(self, timeout_s: float) -> None:
        """A last pass (bounded by ``timeout_s``), then the child exits."""
        self._closing = True
        proc = self._proc
        if proc is not None:
            self._tell("close")
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(timeout_s)


# ------------------------------------------------------------------------------------------- the child
class _Counts:
    def __init__(self) -> None:
        self.shipped_n = 0
        self.dropped_n: dict[str, int] = {}

    def shipped(self, n: int) -> None:
        self.shipped_n += n

    def dropped(self, reason: str, n: int = 1) -> None:
        self.dropped_n[reason] = self.dropped_n.get(reason, 0) + n


def _commands(out: queue.Queue) -> None:
    """stdin's commands: ``pass N`` (ship now, report N) and ``close``."""
    for raw in sys.stdin.buffer:
        out.put(raw.strip().decode(errors="replace"))
    out.put("close")  # stdin ended: the gateway is gone


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    config = orjson.loads(os.environ.pop(ENV))
    from gpt_observatory.serving_hooks.ledger import open_store
    from gpt_observatory.serving_hooks.ledger._ship import Shipper

    counts = _Counts()
    store = open_store(config["store"])
    shipper = Shipper(Path(config["folder"]), store, counts, batch_rows=config["batch_rows"])
    commands: queue.Queue = queue.Queue()
    threading.Thread(target=_commands, args=(commands,), daemon=True).start()
    interval, max_backoff = config["interval_s"], config["max_backoff_s"]
    backoff, closing, asked, answering = interval, False, 0, 0
    while True:
        answering = asked  # this pass began after request ``asked``
        failures, error = 0, None
        try:
            shipper.ship_once()
        except Exception as e:  # the store is down or refused: the rows stay, retried after a backoff
            failures, error = 1, type(e).__qualname__
            backoff = min(max_backoff, max(backoff * 2, 0.05))
        else:
            backoff = interval
        rows, lag = shipper.backlog()
        report = {"shipped": counts.shipped_n, "dropped": counts.dropped_n, "failures": failures,
                  "error": error, "rows": rows, "lag": lag, "asked": answering}
        counts.shipped_n, counts.dropped_n = 0, {}
        sys.stdout.buffer.write(orjson.dumps(report) + b"\n")
        sys.stdout.buffer.flush()
        if closing:
            break
        try:
            command = commands.get(timeout=backoff)
        except queue.Empty:
            continue
        closing = command == "close"
        if command.startswith("pass "):
            asked = max(asked, int(command.split()[1]))
    store.close()


if __name__ == "__main__":
    main()
