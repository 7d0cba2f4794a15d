"""One error hierarchy, rendered as RFC 9457 ``application/problem+json``.

Services raise :class:`Problem` subclasses; Litestar's own exceptions and anything unexpected are
mapped here too, so every 4xx/5xx leaves the server in the same shape and never with a traceback.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from sqlalchemy.exc import DBAPIError

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


def _on_http(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
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


def _on_database_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    # Text PostgreSQL cannot store (a NUL character) is the client's mistake, not ours.
    if type(getattr(exc, "orig", None)).__name__ in _BAD_TEXT or "invalid byte sequence" in str(exc):
        return problem_response(
            request, status=422, slug="validation-error", title="Validation failed",
            detail="text must not contain NUL characters",
        )
    return _on_unexpected(request, exc)


_BAD_TEXT = {"UntranslatableCharacterError", "CharacterNotInRepertoireError"}


def _on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    # The traceback goes to the log; the client learns only that it failed.
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        request, status=500, slug="internal-error", title="Internal server error", detail=None
    )


exception_handlers: dict[type[Exception] | int, Any] = {
    Problem: _on_problem,
    ValidationException: _on_validation,
    HTTPException: _on_http,
    DBAPIError: _on_database_error,
    Exception: _on_unexpected,
}
