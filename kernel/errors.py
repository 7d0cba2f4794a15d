"""One error hierarchy, rendered as RFC 9457 ``application/problem+json``.

Services raise :class:`Problem` subclasses; Litestar's own exceptions and anything unexpected are
mapped here too, so every 4xx/5xx leaves the server in the same shape and never with a traceback.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from redis import exceptions as redis_exceptions
from sqlalchemy import exc as sa_exc
from sqlalchemy.exc import DBAPIError

from kernel.observability.logs import limit_repeats

__all__ = [
    "BadRequest",
    "Conflict",
    "FieldError",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "PaymentRequired",
    "Problem",
    "ServiceUnavailable",
    "TooManyRequests",
    "Unprocessable",
    "exception_handlers",
    "problem_document",
    "translate",
]

log = logging.getLogger("businessos.errors")

PROBLEM_MEDIA_TYPE = "application/problem+json"
_TYPE_BASE = "https://businessos.dev/problems/"


class FieldError(msgspec.Struct, frozen=True):
    """One invalid input: where it is and what is wrong with it."""

    field: str
    message: str


class Problem(Exception):
    """Base of every error the API answers with. Subclasses fix status, type and title."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal server error"

    def __init__(
        self,
        detail: str,
        *,
        errors: Sequence[FieldError] = (),
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = list(errors)
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})


class BadRequest(Problem):
    status, slug, title = 400, "bad-request", "Bad request"


class Forbidden(Problem):
    status, slug, title = 403, "forbidden", "Forbidden"


class NotFound(Problem):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(Problem):
    status, slug, title = 409, "conflict", "Conflict"


class PaymentRequired(Problem):
    """402: the tenant's plan does not allow the action; ``extra`` names the limit and the way to
    lift it (``feature``, ``limit``, ``remaining``, ``lift``)."""

    status, slug, title = 402, "payment-required", "Payment required"


class PayloadTooLarge(Problem):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class Unprocessable(Problem):
    status, slug, title = 422, "validation-error", "Validation failed"


class TooManyRequests(Problem):
    """429; carries ``Retry-After`` and the RateLimit headers in ``headers``."""

    status, slug, title = 429, "rate-limited", "Too many requests"


class ServiceUnavailable(Problem):
    status, slug, title = 503, "service-unavailable", "Service unavailable"


OPENAI_PREFIX = "/v1/"
"""The OpenAI-compatible surface (``kernel.ai.openai_compat``)."""


def problem_document(
    *,
    status: int,
    slug: str,
    title: str,
    detail: str | None,
    instance: str,
    errors: Sequence[FieldError] = (),
    extra: Mapping[str, Any] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """The problem+json body; also used by middleware that answers before Litestar routes."""
    body: dict[str, Any] = {"type": _TYPE_BASE + slug, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body["instance"] = instance
    if request_id:
        body["request_id"] = request_id
    if errors:
        body["errors"] = [{"field": e.field, "message": e.message} for e in errors]
    if extra:
        body.update(extra)
    if instance.startswith(OPENAI_PREFIX):
        # OpenAI's clients read ``error`` (message, type, param, code); problem+json allows the
        # extra member, so one body serves both kinds of client.
        body["error"] = {
            "message": detail or title,
            "type": slug,
            "param": errors[0].field if errors else None,
            "code": slug,
        }
    return body


def problem_response(
    request: Request[Any, Any, Any],
    *,
    status: int,
    slug: str,
    title: str,
    detail: str | None,
    errors: Sequence[FieldError] = (),
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response[bytes]:
    body = problem_document(
        status=status,
        slug=slug,
        title=title,
        detail=detail,
        instance=request.url.path,
        errors=errors,
        extra=extra,
        request_id=request.scope.get("state", {}).get("request_id"),
    )
    return Response(
        content=msgspec.json.encode(body),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=dict(headers or {}),
    )


def _on_problem(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, Problem)
    return problem_response(
        request,
        status=exc.status,
        slug=exc.slug,
        title=exc.title,
        detail=exc.detail,
        errors=exc.errors,
        extra=exc.extra,
        headers=exc.headers,
    )


_MISSING = re.compile(r"(?:missing required|contains unknown) field `([^`]+)`")
_AT_PATH = re.compile(r" - at `\$\.?([^`]*)`")


def _field_errors(extra: Any) -> list[FieldError]:
    errors: list[FieldError] = []
    for item in extra if isinstance(extra, list) else []:
        if not isinstance(item, dict):
            continue
        message = str(item.get("message", "invalid value"))
        field = str(item.get("key") or item.get("source") or "body")
        # msgspec reports a missing field on the enclosing object; name the field itself.
        if (missing := _MISSING.search(message)) is not None:
            path = _AT_PATH.search(message)
            prefix = path.group(1) + "." if path and path.group(1) else ""
            field = prefix + missing.group(1)
        errors.append(FieldError(field=field, message=_AT_PATH.sub("", message)))
    return errors


def _on_validation(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, ValidationException)
    errors = _field_errors(exc.extra)
    if errors:
        fields = ", ".join(sorted({e.field for e in errors}))
        return problem_response(
            request,
            status=422,
            slug="validation-error",
            title="Validation failed",
            detail=f"invalid value for: {fields}",
            errors=errors,
        )
    return problem_response(
        request, status=400, slug="bad-request", title="Bad request", detail=str(exc.detail)
    )


_HTTP_SLUGS = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("payload-too-large", "Payload too large"),
    402: ("payment-required", "Payment required"),
    415: ("unsupported-media-type", "Unsupported media type"),
    429: ("rate-limited", "Too many requests"),
    503: ("service-unavailable", "Service unavailable"),
}


_BODY_AT = re.compile(r" - at `\$\.data\.?([^`]*)`")


def _body_errors(exc: HTTPException) -> list[FieldError]:
    """Field errors of a request body that Litestar took for a server error.

    Litestar treats a validation error whose field is named like a dependency (a body field
    ``tenant`` beside the app's ``tenant`` dependency) as a fault of the dependency, a bare 500;
    its cause still says the error was in ``data``, the body.
    """
    cause = exc.__cause__
    if not isinstance(cause, msgspec.ValidationError):
        return []
    errors: list[FieldError] = []
    for item in getattr(cause, "errors", None) or [{"loc": None, "msg": str(cause)}]:
        loc = item.get("loc")
        message = str(item.get("msg", ""))
        if loc:
            if str(loc[0]) != "data":
                return []
            field = ".".join(str(part) for part in loc[1:]) or "body"
        else:
            found = _BODY_AT.search(message)
            if found is None:
                return []
            field = found.group(1) or "body"
        errors.append(FieldError(field=field, message=_AT_PATH.sub("", message)))
    return errors


def _on_http(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    body_errors = _body_errors(exc) if status == 500 else []
    if body_errors:
        fields = ", ".join(sorted({e.field for e in body_errors}))
        return problem_response(
            request, status=422, slug="validation-error", title="Validation failed",
            detail=f"invalid value for: {fields}", errors=body_errors,
        )
    if status >= 500:
        log.error("HTTP %s on %s: %s", status, request.url.path, exc.detail)
        return problem_response(
            request, status=status, slug="internal-error", title="Internal server error", detail=None
        )
    slug, title = _HTTP_SLUGS.get(status, ("http-error", "HTTP error"))
    detail = exc.detail if exc.detail and exc.detail.lower() != title.lower() else None
    if status == 404 and detail is None:
        detail = f"no route matches {request.method} {request.url.path}"
    return problem_response(
        request, status=status, slug=slug, title=title, detail=detail, headers=exc.headers or None
    )


_RETRY_AFTER = "5"
"""Seconds a client is told to wait when PostgreSQL or Redis is unreachable."""
# An outage fails every request the same way: one warning per interval says so.
limit_repeats(log, 10.0)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, the driver error SQLAlchemy wraps, and their causes, each once."""
    found: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop(0)
        if item is None or any(item is seen for seen in found):
            continue
        found.append(item)
        todo.extend((getattr(item, "orig", None), item.__cause__, item.__context__))
    return found


# SQLSTATEs of an unreachable or restarting PostgreSQL: class 08 (connection exception) is
# matched by prefix; 57P01-03 are admin/crash shutdown and "cannot connect now"; 53300 is
# too many connections.
_OUTAGE_STATES = {"57P01", "57P02", "57P03", "53300"}
# SQLSTATEs that say the caller sent a value the database refuses, with the title to answer.
_INPUT_STATES = {
    "22001": "a text value is too long",
    "22003": "a number is out of range",
    "22007": "a date or time value is invalid",
    "22008": "a date or time value is out of range",
    "22021": "text must not contain NUL characters",
    "22P02": "a value has the wrong form",
    "22P05": "text must not contain NUL characters",
    "2201W": "a limit is out of range",
    "2201X": "an offset is out of range",
    "23502": "a required value is missing",
    "23514": "a value breaks a rule of the data",
}
_KEY = re.compile(r"Key \(([^)]+)\)")


def _outage(service: str) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"{service} is unavailable; retry shortly", headers={"Retry-After": _RETRY_AFTER}
    )


def _input_problem(error: Any, sqlstate: str) -> Problem:
    """A 409/422 naming the column or constraint the database names (never the values)."""
    column = getattr(error, "column_name", None)
    constraint = getattr(error, "constraint_name", None)
    key = _KEY.search(getattr(error, "detail", None) or "")
    field = column or (key.group(1) if key else None)
    extra = {"constraint": constraint} if constraint else {}
    if sqlstate == "23505":
        what = f" ({field})" if field else ""
        return Conflict(f"an entry with the same{what} already exists", extra=extra)
    if sqlstate == "23503":
        if "still referenced" in (getattr(error, "detail", None) or ""):
            return Conflict("other data still refers to this entry", extra=extra)
        message = "refers to something that does not exist"
        return Unprocessable(
            f"{field or 'a reference'} {message}",
            errors=[FieldError(field=field, message=message)] if field else (),
            extra=extra,
        )
    if sqlstate == "23P01":
        return Conflict("the entry overlaps another one", extra=extra)
    message = _INPUT_STATES.get(sqlstate, "a value is not valid here")
    if constraint and not field:
        message = f"{message} ({constraint})"
    return Unprocessable(
        message, errors=[FieldError(field=field, message=message)] if field else (), extra=extra
    )


# Failures of reaching PostgreSQL at all: refused or reset sockets, a pool checkout that timed
# out, a connection SQLAlchemy found dead.
_UNREACHABLE = (
    OSError,
    TimeoutError,
    sa_exc.TimeoutError,
    sa_exc.DisconnectionError,
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
)


def translate(exc: BaseException) -> Problem | None:
    """The problem a database or Redis failure stands for, or ``None`` when it is our bug.

    PostgreSQL or Redis unreachable, restarting or closing connections -> 503 with Retry-After;
    a value PostgreSQL refuses (out of range, malformed, NUL, too long, a broken check, unique or
    foreign key) -> 422/409 naming the field or constraint where the database names it.
    """
    chain = _chain(exc)
    for item in chain:
        if isinstance(item, asyncpg.PostgresError):
            state = str(getattr(item, "sqlstate", "") or "")
            if state.startswith("08") or state in _OUTAGE_STATES:
                return _outage("the database")
            if "invalid input for query argument" in str(item):
                # Refused by the driver before it was sent: an argument that does not fit its type.
                reason = str(item).rpartition(" (")[2].rstrip(")")
                return Unprocessable(f"a value does not fit the database: {reason}")
            if state.startswith(("22", "23")):  # data exception, integrity constraint violation
                return _input_problem(item, state)
        elif isinstance(item, redis_exceptions.ConnectionError | redis_exceptions.TimeoutError):
            return _outage("Redis")
    for item in chain:
        if (
            isinstance(item, _UNREACHABLE)
            or (isinstance(item, DBAPIError) and item.connection_invalidated)
            or (isinstance(item, asyncpg.InterfaceError) and "connection" in str(item))
        ):
            return _outage("the database")
    return None


def _on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    problem = translate(exc)
    if problem is not None:
        if problem.status == 503:
            log.warning("%s: %s", problem.detail, type(exc).__name__, extra={"repeat_key": problem.detail})
        return _on_problem(request, problem)
    # The traceback goes to the log; the client learns only that it failed.
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        request, status=500, slug="internal-error", title="Internal server error", detail=None
    )


exception_handlers: dict[type[Exception] | int, Any] = {
    Problem: _on_problem,
    ValidationException: _on_validation,
    HTTPException: _on_http,
    Exception: _on_unexpected,
}
