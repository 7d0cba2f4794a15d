"""JSON bodies checked strictly against their declared types.

Litestar converts a handler's arguments in msgspec's lax mode, which query strings need (``"5"``
for an int) but which lets a JSON body through with ``0`` for a boolean, ``"5"`` or ``5.0`` for an
integer: more than the OpenAPI document says a body may hold. :func:`strict_body_guard` converts
the decoded body to the handler's ``data`` type in strict mode first and answers 422 naming the
field when it does not fit, so the document's types are what the server takes.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers import HTTPRouteHandler
from litestar.handlers.base import BaseRouteHandler

from kernel.errors import FieldError, Unprocessable

__all__ = ["strict_body_guard"]

_AT = re.compile(r" - at `\$\.?([^`]*)`")


def _data_type(handler: HTTPRouteHandler) -> Any:
    parameter = handler.parsed_fn_signature.parameters.get("data")
    return None if parameter is None else parameter.annotation


async def strict_body_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """422 when the JSON body is not of the handler's ``data`` type under strict conversion."""
    if not isinstance(handler, HTTPRouteHandler) or not isinstance(connection, Request):
        return
    annotation = _data_type(handler)
    if annotation is None or not (connection.headers.get("content-type") or "").startswith("application/json"):
        return
    if not await connection.body():
        return  # no body: Litestar says whether one is required
    try:
        value = await connection.json()
    except Exception:  # not JSON: Litestar answers it, in its place
        return
    try:
        msgspec.convert(value, annotation, strict=True, str_keys=True)
    except (TypeError, NotImplementedError):
        return  # a type msgspec cannot check: Litestar's own conversion stands
    except msgspec.ValidationError as exc:
        message = str(exc)
        at = _AT.search(message)
        field = at.group(1) if at and at.group(1) else "body"
        raise Unprocessable(
            f"invalid value for: {field}", errors=[FieldError(field=field, message=_AT.sub("", message))]
        ) from None
