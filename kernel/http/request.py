"""The kernel's request class: the one path every JSON request body is decoded through.

Before a body is decoded it is checked for nesting deeper than :data:`MAX_JSON_DEPTH` (a 400
naming the limit): msgspec decodes recursively, and a body of a few kilobytes nested thousands
deep would otherwise exhaust the stack. After decoding, a string holding a NUL character (which
PostgreSQL cannot store) is refused with a 422 naming the field.
"""

from __future__ import annotations

import re
from typing import Any

from litestar import Request
from litestar.types import Empty

from kernel.errors import BadRequest, FieldError, Unprocessable

__all__ = ["MAX_JSON_DEPTH", "KernelRequest", "checked_json", "json_too_deep", "nul_path"]

MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a JSON body may have."""

# A JSON string (its escapes included), unrolled so that long strings match in one pass.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPEN = frozenset(b"[{")
_ESCAPED_NUL = b"\\u0000"


def json_too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``body`` nests arrays and objects deeper than ``limit``.

    Cheap: a body with fewer opening brackets than the limit is never scanned; otherwise strings
    are cut out (brackets inside them do not count) and the brackets that remain are walked.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    for byte in _STRING.sub(b"", body).translate(None, _NOT_BRACKETS):
        if byte in _OPEN:
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def nul_path(value: Any, path: str = "") -> str | None:
    """The path (``a.b[2]``) of the first key or string in ``value`` that holds a NUL, if any."""
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return here.replace("\x00", "\\u0000")
            found = nul_path(item, here)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = nul_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


async def checked_json(request: Request[Any, Any, Any]) -> Any:
    """The request's JSON body, decoded once, with the checks above: 400 past the depth limit
    (before decoding), 422 naming the first field that holds a NUL character."""
    if request._connection_state.json is not Empty:
        return await Request.json(request)  # decoded, and checked, earlier in this request
    body = await request.body()
    if json_too_deep(body):
        raise BadRequest(
            f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels", extra={"max_depth": MAX_JSON_DEPTH}
        )
    value = await Request.json(request)
    if _ESCAPED_NUL in body:
        field = nul_path(value)
        if field is not None:
            message = "must not contain NUL characters"
            raise Unprocessable(f"{field} {message}", errors=[FieldError(field=field, message=message)])
    return value


class KernelRequest(Request[Any, Any, Any]):
    """Litestar's request with the checks above on :meth:`json`, which route handlers' ``data``
    parameters are decoded through."""

    async def json(self) -> Any:
        return await checked_json(self)
