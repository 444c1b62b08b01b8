"""Structured warning events, like the seed's ``tracing::warn!(field = %value, "message")``.

``capture`` collects the events of one logger (the targets' ``harness.oauth``);
``capture_everything`` collects what a target under review could write anywhere:
every logger at every level, ``sys.stdout``/``sys.stderr`` and file descriptors 1 and 2.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from harness.redact import redact_fields

OAUTH_LOGGER = "harness.oauth"


@dataclass(frozen=True)
class LogEvent:
    """One emitted event: the level, the message and its fields."""

    level: str
    message: str
    fields: dict[str, Any] = field(default_factory=dict)
    logger: str = OAUTH_LOGGER
    #: The formatted traceback of ``exc_info`` / ``stack_info``, if the event carried one.
    exception: str = ""

    def render(self) -> str:
        """The line a log collector would store: ``message key=value …`` (then any traceback)."""
        parts = [self.message] + [f"{k}={v}" for k, v in self.fields.items()]
        return " ".join(parts) + (f"\n{self.exception}" if self.exception else "")


class FieldsFormatter(logging.Formatter):
    """Appends a record's ``fields`` as ``key=value`` pairs (the tracing fmt layer), secrets redacted.

    What a console or a log file receives never carries a raw code or token
    (``harness.redact``), even when the target under review put one in its event.
    """

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        fields = redact_fields(getattr(record, "fields", None) or {})
        return " ".join([base] + [f"{k}={v}" for k, v in fields.items()])


def warn(logger: logging.Logger, message: str, **fields: Any) -> None:
    """Emit a warning event with structured fields."""
    logger.warning(message, extra={"fields": fields})


#: Attributes every ``LogRecord`` has; anything else on a record came from ``extra=`` (a field).
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName", "fields"}


class _CaptureHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.events: list[LogEvent] = []
        self._lock_events = threading.Lock()
        self._formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a target's malformed %-args must not hide the line it meant to write
            message = f"{record.msg} {record.args}"
        # ``warn()``'s structured fields, and any other ``extra=`` attribute a foreign logger call
        # set (``log.info("redeemed", extra={"code": code})``): a formatter could print either.
        fields = dict(getattr(record, "fields", None) or {})
        fields.update({k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS})
        exception = ""
        if record.exc_info:
            exception = self._formatter.formatException(record.exc_info)
        if record.stack_info:
            exception = "\n".join(filter(None, [exception, record.stack_info]))
        event = LogEvent(level=record.levelname, message=message, fields=fields, logger=record.name,
                         exception=exception)
        with self._lock_events:
            self.events.append(event)


@contextmanager
def capture(logger_name: str = OAUTH_LOGGER) -> Iterator[list[LogEvent]]:
    """Collect every event emitted under ``logger_name`` inside the block."""
    handler = _CaptureHandler()
    logger = logging.getLogger(logger_name)
    old_level = logger.level
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        yield handler.events
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@dataclass
class Captured:
    """What ``capture_everything`` collected: log events, and what reached stdout and stderr."""

    events: list[LogEvent] = field(default_factory=list)
    #: ``sys.stdout`` writes (``print``), then what reached file descriptor 1 directly.
    stdout: str = ""
    stderr: str = ""

    def lines(self) -> list[tuple[str, str]]:
        """Every captured line as ``(where, text)``: ``log <logger> <LEVEL>``, ``stdout``, ``stderr``."""
        out = [(f"log {e.logger} {e.level}", e.render()) for e in self.events]
        for where, text in (("stdout", self.stdout), ("stderr", self.stderr)):
            out += [(where, line) for line in text.splitlines() if line.strip()]
        return out


class _FdCapture:
    """File descriptor ``fd`` pointed at a temporary file, then restored: catches what a target
    writes below ``sys.stdout`` (``os.write(1, …)``, a C extension, a subprocess it spawns)."""

    def __init__(self, fd: int, stream: IO[str] | None) -> None:
        self.fd, self.stream = fd, stream
        self.tmp: IO[bytes] | None = None
        self.saved: int | None = None

    def start(self) -> None:
        try:
            self._flush()
            self.saved = os.dup(self.fd)
        except (OSError, ValueError):  # no such descriptor (a daemon): nothing can be written there
            self.saved = None
            return
        # Closed in stop(): the file must outlive this call, so no ``with`` here.
        self.tmp = tempfile.TemporaryFile()  # noqa: SIM115
        os.dup2(self.tmp.fileno(), self.fd)

    def _flush(self) -> None:
        if self.stream is not None:
            with contextlib.suppress(Exception):
                self.stream.flush()

    def stop(self) -> str:
        if self.saved is None or self.tmp is None:
            return ""
        self._flush()  # what the real stream buffered during the block belongs to the block
        os.dup2(self.saved, self.fd)
        os.close(self.saved)
        self.tmp.seek(0)
        data = self.tmp.read().decode("utf-8", "replace")
        self.tmp.close()
        return data


@contextmanager
def capture_everything(*, fds: bool = True) -> Iterator[Captured]:
    """Collect every log record of every logger at every level, and all of stdout and stderr.

    Inside the block every logger is enabled at ``DEBUG`` and its handlers are replaced by one
    capturing handler (on the root and on each logger that does not propagate), so each record
    is collected once whatever logger a target uses, and nothing reaches the console or a log
    file as a side effect (the lines may carry the very secrets under test). ``sys.stdout`` and
    ``sys.stderr`` are redirected, and with ``fds`` so are file descriptors 1 and 2. Everything
    is restored when the block ends; what other threads emit meanwhile is collected too.
    """
    captured = Captured()
    handler = _CaptureHandler()
    captured.events = handler.events
    root = logging.getLogger()
    manager = logging.Logger.manager
    loggers = [root] + [lg for lg in list(manager.loggerDict.values()) if isinstance(lg, logging.Logger)]
    saved = [(lg, lg.level, lg.handlers, lg.disabled) for lg in loggers]
    disabled_level = manager.disable
    fd_captures = [_FdCapture(1, sys.__stdout__), _FdCapture(2, sys.__stderr__)] if fds else []
    out, err = io.StringIO(), io.StringIO()
    logging.disable(logging.NOTSET)
    for lg in loggers:
        lg.handlers = [handler] if lg is root or not lg.propagate else []
        lg.disabled = False
        lg.setLevel(logging.DEBUG)
    try:
        for fc in fd_captures:
            fc.start()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield captured
    finally:
        raw = [fc.stop() for fc in fd_captures]
        for lg, level, handlers, disabled in saved:
            lg.handlers = handlers
            lg.disabled = disabled
            lg.setLevel(level)
        logging.disable(disabled_level)
        captured.stdout = out.getvalue() + (raw[0] if raw else "")
        captured.stderr = err.getvalue() + (raw[1] if raw else "")
