"""Structured warning events, like the seed's ``tracing::warn!(field = %value, "message")``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from harness.redact import redact_fields

OAUTH_LOGGER = "harness.oauth"


@dataclass(frozen=True)
class LogEvent:
    """One emitted event: the level, the message and its fields."""

    level: str
    message: str
    fields: dict[str, Any] = field(default_factory=dict)
    logger: str = OAUTH_LOGGER

    def render(self) -> str:
        """The line a log collector would store: ``message key=value …``."""
        parts = [self.message] + [f"{k}={v}" for k, v in self.fields.items()]
        return " ".join(parts)


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


class _CaptureHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.events: list[LogEvent] = []
        self._lock_events = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        event = LogEvent(
            level=record.levelname,
            message=record.getMessage(),
            fields=dict(getattr(record, "fields", None) or {}),
            logger=record.name,
        )
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
