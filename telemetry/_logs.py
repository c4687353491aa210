"""The loguru bridge: trace-correlated records to the OTel logs pipeline and the console.

Every record gets ``trace_id``/``span_id`` from the active span and has credentials masked in
its message and extras (one patcher, so every sink sees the same record); the console sink masks
the text loguru formats too (a traceback's exception message). Standard ``logging`` records are
routed through loguru, so they take the same path. A ``ContextVar`` guards the OTel sink against
re-entry (telemetry that logs while exporting a log cannot recurse).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import sys
import threading
import traceback
from contextvars import ContextVar
from types import TracebackType
from typing import Any

from loguru import logger
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider

from gpt_observatory.telemetry.redact import Redactor
from gpt_observatory.telemetry.settings import Settings

_IN_SINK: ContextVar[bool] = ContextVar("observatory_in_log_sink", default=False)

_SEVERITY = {
    "TRACE": SeverityNumber.TRACE,
    "DEBUG": SeverityNumber.DEBUG,
    "INFO": SeverityNumber.INFO,
    "SUCCESS": SeverityNumber.INFO2,
    "WARNING": SeverityNumber.WARN,
    "ERROR": SeverityNumber.ERROR,
    "CRITICAL": SeverityNumber.FATAL,
}
HUMAN_FORMAT = (
    "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{name}</cyan> {message} <dim>{extra[trace_id]}</dim>"
)
_NO_TRACE = ""
_SKIP_EXTRA = frozenset({"trace_id", "span_id"})
_CHATTY = ("httpx", "httpcore", "urllib3")
# Loggers that others configure with handlers of their own that do not propagate (uvicorn's default
# config; Prefect's logging.yml gives "uvicorn" its console handler): their records, a handler's
# traceback among them, would reach stderr around the redaction. While installed, they propagate
# to the root logger (and so into loguru) and have no handlers of their own.
_CAPTURED = ("uvicorn", "uvicorn.error", "uvicorn.access")


class _InterceptHandler(logging.Handler):
    """Sends standard ``logging`` records into loguru (loguru's documented recipe)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        frame, depth = inspect.currentframe(), 0
        while frame and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame, depth = frame.f_back, depth + 1
        logger.bind(logger_name=record.name).opt(depth=depth, exception=record.exc_info).log(
            level, record.getMessage()
        )


class _RedactedStream:
    """A text stream that masks credentials in whatever is written to it (the console sink)."""

    def __init__(self, stream: Any, redactor: Redactor):
        self._stream, self._redactor = stream, redactor

    def write(self, text: str) -> None:
        self._stream.write(self._redactor.text(text))

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:  # loguru colours a terminal only
        isatty = getattr(self._stream, "isatty", None)
        return bool(isatty and isatty())


class LoguruBridge:
    def __init__(self, settings: Settings, logger_provider: LoggerProvider | None, redactor: Redactor, console: bool):
        self._settings, self._redactor, self._console = settings, redactor, console
        self._otel = logger_provider.get_logger("observatory.loguru") if logger_provider else None
        self._ids: list[int] = []
        self._handler: _InterceptHandler | None = None
        self._quieted: list[tuple[logging.Logger, int]] = []
        self._captured: list[tuple[logging.Logger, list[logging.Handler], bool]] = []
        self._old_root_level = logging.root.level
        self._old_hooks: tuple[Any, Any] | None = None

    def install(self) -> None:
        logger.configure(patcher=self._patch)
        with contextlib.suppress(ValueError):
            logger.remove(0)  # loguru's default stderr sink; ours replaces it
        level = self._settings.log_level
        # diagnose=False everywhere: loguru's default prints every local of every frame of a traceback,
        # which is where a caller's API key, JWT and prompt sit on the request path.
        if self._console:
            # What reaches stderr is masked as it is written: the message is masked already, but a
            # traceback's exception text, or the extras of a JSON record, are formatted by loguru.
            console = _RedactedStream(sys.stderr, self._redactor)
            if self._settings.console_format == "json":
                self._ids.append(logger.add(console, level=level, serialize=True, diagnose=False))
            else:
                self._ids.append(
                    logger.add(console, level=level, format=HUMAN_FORMAT, colorize=None, diagnose=False)
                )
        if self._otel is not None:
            self._ids.append(logger.add(self._sink, level=level, format="{message}", catch=True, diagnose=False))
        # HTTP client libraries log every request at INFO; keep them at WARNING unless asked for DEBUG.
        if level not in ("TRACE", "DEBUG"):
            for name in _CHATTY:
                lib = logging.getLogger(name)
                self._quieted.append((lib, lib.level))
                lib.setLevel(logging.WARNING)
        for name in _CAPTURED:
            lib = logging.getLogger(name)
            self._captured.append((lib, lib.handlers[:], lib.propagate))
            lib.handlers.clear()
            lib.propagate = True
        self._handler = _InterceptHandler(level=self._settings.log_level if level != "SUCCESS" else "INFO")
        logging.root.addHandler(self._handler)
        if logging.root.level > self._handler.level or logging.root.level == logging.NOTSET:
            logging.root.setLevel(self._handler.level)
        # Python prints an uncaught exception to stderr itself: mask that traceback as well.
        self._old_hooks = (sys.excepthook, threading.excepthook)
        sys.excepthook, threading.excepthook = self._uncaught, self._uncaught_in_thread

    def uninstall(self) -> None:
        for handler_id in self._ids:
            with contextlib.suppress(ValueError):
                logger.remove(handler_id)
        self._ids.clear()
        logger.configure(patcher=lambda record: record["extra"].setdefault("trace_id", _NO_TRACE))
        for lib, old_level in self._quieted:
            lib.setLevel(old_level)
        self._quieted.clear()
        for lib, handlers, propagate in self._captured:
            lib.handlers[:] = handlers
            lib.propagate = propagate
        self._captured.clear()
        if self._handler is not None:
            logging.root.removeHandler(self._handler)
            logging.root.setLevel(self._old_root_level)
            self._handler = None
        if self._old_hooks is not None:  # unless someone else set them since
            if sys.excepthook == self._uncaught:
                sys.excepthook = self._old_hooks[0]
            if threading.excepthook == self._uncaught_in_thread:
                threading.excepthook = self._old_hooks[1]
            self._old_hooks = None

    def _uncaught(self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        sys.stderr.write(self._redactor.text("".join(traceback.format_exception(exc_type, exc, tb))))

    def _uncaught_in_thread(self, args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else threading.get_ident()
        sys.stderr.write(f"Exception in thread {name}:\n")
        self._uncaught(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)

    def _patch(self, record: Any) -> None:
        ctx = trace.get_current_span().get_span_context()
        extra = record["extra"]
        if ctx.is_valid:
            extra["trace_id"] = format(ctx.trace_id, "032x")
            extra["span_id"] = format(ctx.span_id, "016x")
        else:
            extra.setdefault("trace_id", _NO_TRACE)
        record["message"] = self._redactor.text(record["message"])
        masked = self._redactor.attributes(extra)
        if masked is not extra:
            extra.update(masked)  # the record's own dict: every sink sees the masked values

    def _sink(self, message: Any) -> None:
        if _IN_SINK.get():
            return
        token = _IN_SINK.set(True)
        try:
            record = message.record
            attrs: dict[str, Any] = {
                "code.file.path": record["file"].path,
                "code.function.name": record["function"],
                "code.line.number": record["line"],
                "logger.name": record["extra"].get("logger_name", record["name"]),
            }
            for key, value in record["extra"].items():
                if key not in _SKIP_EXTRA and key != "logger_name":
                    attrs[key] = value if isinstance(value, (str, bool, int, float)) else str(value)
            exc = record["exception"]
            if exc is not None and exc.type is not None:
                attrs["exception.type"] = exc.type.__name__
                attrs["exception.message"] = self._redactor.text(str(exc.value))
            self._otel.emit(
                LogRecord(
                    timestamp=int(record["time"].timestamp() * 1e9),
                    context=otel_context.get_current(),
                    severity_number=_SEVERITY.get(record["level"].name, SeverityNumber.INFO),
                    severity_text=record["level"].name,
                    body=record["message"],
                    attributes=self._redactor.attributes(attrs),
                )
            )
        finally:
            _IN_SINK.reset(token)
