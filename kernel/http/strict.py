"""JSON bodies and date query parameters checked strictly against their declared types.

Litestar converts a handler's arguments in msgspec's lax mode, which query strings need (``"5"``
for an int) but which lets a JSON body through with ``0`` for a boolean, ``"5"`` or ``5.0`` for an
integer, and takes ``?created_before=0.5`` as a Unix timestamp: more than the OpenAPI document
says (``format: date-time``). :func:`strict_body_guard` converts the decoded body to the handler's
``data`` type in strict mode first, and requires date and date-time query parameters to be
RFC 3339 text; it answers 422 naming the field when they do not fit.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers import HTTPRouteHandler
from litestar.handlers.base import BaseRouteHandler

from kernel.errors import FieldError, Problem, Unprocessable
from kernel.http.request import checked_json

__all__ = ["strict_body_guard"]

_AT = re.compile(r" - at `\$\.?([^`]*)`")
_NAMED = re.compile(r"(?:missing required|contains unknown) field `([^`]+)`")


def _data_type(handler: HTTPRouteHandler) -> Any:
    parameter = handler.parsed_fn_signature.parameters.get("data")
    return None if parameter is None else parameter.annotation


def _invalid(field: str, message: str) -> Unprocessable:
    return Unprocessable(f"invalid value for: {field}", errors=[FieldError(field=field, message=message)])


def _check_dates(handler: HTTPRouteHandler, query: Any) -> None:
    """Date and date-time query parameters must be RFC 3339 text, not numbers."""
    for name, parameter in handler.parsed_fn_signature.parameters.items():
        kinds = [t.annotation for t in parameter.inner_types] if parameter.is_optional else [parameter.annotation]
        kind = next((k for k in kinds if isinstance(k, type) and issubclass(k, date)), None)
        if kind is None:
            continue
        key = getattr(parameter.kwarg_definition, "query", None) or name
        for raw in query.getall(key, ()):
            try:
                msgspec.convert(raw, kind, strict=True)
            except msgspec.ValidationError:
                expected = "an RFC 3339 date-time" if kind is not date else "an ISO 8601 date (YYYY-MM-DD)"
                raise _invalid(key, f"expected {expected}") from None


async def strict_body_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """422 when the JSON body is not of the handler's ``data`` type under strict conversion, or a
    date query parameter is not RFC 3339 text."""
    if not isinstance(handler, HTTPRouteHandler) or not isinstance(connection, Request):
        return
    if connection.query_params:
        _check_dates(handler, connection.query_params)
    annotation = _data_type(handler)
    if annotation is None or not (connection.headers.get("content-type") or "").startswith("application/json"):
        return
    if not await connection.body():
        return  # no body: Litestar says whether one is required
    try:
        value = await checked_json(connection)  # the kernel's checks (depth, NUL) answer first
    except Problem:
        raise
    except Exception:  # not JSON: Litestar answers it, in its place
        return
    try:
        msgspec.convert(value, annotation, strict=True, str_keys=True)
    except (TypeError, NotImplementedError):
        return  # a type msgspec cannot check: Litestar's own conversion stands
    except msgspec.ValidationError as exc:
        message = str(exc)
        at = _AT.search(message)
        field = at.group(1) if at and at.group(1) else ""
        named = _NAMED.search(message)  # msgspec reports it on the enclosing object: name the field
        if named is not None:
            field = f"{field}.{named.group(1)}" if field else named.group(1)
        field = field or "body"
        raise _invalid(field, _AT.sub("", message)) from None
