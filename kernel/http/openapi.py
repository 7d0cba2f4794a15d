"""The OpenAPI document, completed with what Litestar cannot see from the handlers' signatures.

Litestar documents each operation's success answer and a generic 400 in its own JSON shape. The
server says more than that, the same way on every route, so this module says it once, for all of
them, when the document is first served (:class:`OpenAPIDocument` renders ``/schema/openapi.json``):

- the security schemes (a JWT or an API key as ``Authorization: Bearer``, an API key as
  ``X-API-Key``) and, per operation, its security: none on public routes;
- every error status the operation can answer, each as RFC 9457 ``application/problem+json``
  (see :mod:`kernel.errors`), replacing Litestar's ``application/json`` 400. Which ones follow
  from the route: its ``opt`` (permission, plugin module), its path parameters, its request body,
  its ``If-Match`` header, its method;
- a raw request body a handler reads itself: ``opt["request_media_type"]`` (e.g. ``text/csv``)
  documents it; a ``data`` parameter with a default makes the JSON body optional;
- statuses only the handler knows of (a budget, an outside provider): ``opt["problems"]``;
- a PATCH whose JSON body carries a ``version`` is optimistic (the CRM's records): its
  ``If-Match`` header and the 412/428 it leads to;
- links, for stateful testing (schemathesis follows them): a ``POST /x`` answering an object with an
  ``id`` links to the operations of ``/x/{param}`` with that id (and the path parameters the two
  share), derived from the route patterns, not written per route (:func:`_links`);
- request body schemas as msgspec states them: Litestar's own rendering of a ``msgspec.Struct``
  drops ``forbid_unknown_fields`` (``additionalProperties: false``) and some bounds (those inside
  ``UNSET`` unions, those of list items); msgspec's is what the server enforces (with one
  correction: a ``Decimal`` is taken as a JSON number too, not only as a string).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.routes import HTTPRoute

from kernel.errors import PROBLEM_MEDIA_TYPE
from kernel.identity.permissions import PUBLIC

if TYPE_CHECKING:
    from litestar import Litestar, Request
    from litestar.handlers import HTTPRouteHandler

__all__ = ["PROBLEMS_OPT", "REQUEST_MEDIA_TYPE_OPT", "SECURITY_SCHEMES", "OpenAPIDocument", "complete_document"]

REQUEST_MEDIA_TYPE_OPT = "request_media_type"
"""Route ``opt`` key: the media type of a body the handler reads raw (not in its signature)."""

PROBLEMS_OPT = "problems"
"""Route ``opt`` key: further error statuses the route can answer (a sequence of ints)."""

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An access token from /api/auth/login, or an API key (``bos_...``).",
    },
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "An API key made with POST /api/api-keys.",
    },
}
_AUTHENTICATED: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]

_PROBLEM = "#/components/schemas/Problem"
_VALIDATION_PROBLEM = "#/components/schemas/ValidationProblem"
_SCHEMAS: dict[str, dict[str, Any]] = {
    "Problem": {
        "type": "object",
        "description": "An error, as RFC 9457 problem details.",
        "required": ["type", "title", "status", "instance"],
        "properties": {
            "type": {"type": "string", "format": "uri"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "request_id": {"type": "string"},
            "errors": {"type": "array", "items": {"$ref": "#/components/schemas/FieldError"}},
        },
    },
    "ValidationProblem": {
        "description": "Invalid input; ``errors`` names each field and what is wrong with it.",
        "allOf": [
            {"$ref": _PROBLEM},
            {"type": "object", "properties": {"status": {"type": "integer", "enum": [422]}}},
        ],
    },
    "FieldError": {
        "type": "object",
        "required": ["field", "message"],
        "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
    },
}

_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}}
_STATUSES: dict[int, tuple[str, dict[str, Any] | None]] = {
    400: ("Malformed request (syntax, header, or a missing X-Tenant-ID)", None),
    401: ("No credentials, or credentials that are not valid", None),
    402: ("The call could exceed the tenant's AI budget", None),
    403: ("The credentials lack the route's permission, or are for another tenant", None),
    404: ("No such resource in this tenant (or the route's module is not enabled)", None),
    405: ("Method not allowed", None),
    409: ("Conflicts with the current state (a duplicate, or a stale version)", None),
    412: ("If-Match names another version than the current one", None),
    413: ("The request body is too large", None),
    415: ("The request body's media type is not accepted", None),
    422: ("A field is invalid", None),
    428: ("A change must name the version it changes (If-Match or version)", None),
    429: ("Rate limited", _RETRY_AFTER),
    502: ("The outside provider failed or refused the tenant's key", None),
    503: ("A service the API depends on is unavailable", _RETRY_AFTER),
    504: ("The outside provider did not answer in time", None),
}

_WRITES = {"post", "put", "patch", "delete"}


def _statuses(handler: HTTPRouteHandler, method: str, operation: dict[str, Any]) -> set[int]:
    """The error statuses ``operation`` can answer, from its handler and its parameters."""
    permission = handler.opt.get("permission")
    module = handler.opt.get("module")
    parameters = operation.get("parameters") or []
    has_body = "requestBody" in operation
    statuses = {429, 503}  # the rate limit is app-wide; every route may need PostgreSQL or Redis
    if permission != PUBLIC or module is not None:
        statuses |= {400, 404}  # the tenant: a bad X-Tenant-ID, an unknown tenant, a disabled module
    if permission != PUBLIC or handler.opt.get("rate_limit") == "auth" or handler.opt.get("credentials"):
        statuses.add(401)  # a public auth route checks the credentials it is given
    if permission != PUBLIC:
        statuses.add(403)  # also for an X-Tenant-ID of another tenant
    if any(p.get("in") == "path" for p in parameters):
        statuses |= {400, 404}
    if parameters or has_body:
        statuses |= {400, 422}
    if has_body or method in _WRITES:
        statuses |= {400, 413, 415, 422}
    if method in _WRITES:
        statuses.add(409)
    if any(p.get("in") == "header" and p.get("name", "").lower() == "if-match" for p in parameters):
        statuses |= {412, 428}
    statuses.update(handler.opt.get(PROBLEMS_OPT, ()))
    return statuses


def _problem_response(status: int) -> dict[str, Any]:
    description, headers = _STATUSES[status]
    ref = _VALIDATION_PROBLEM if status == 422 else _PROBLEM
    response: dict[str, Any] = {"description": description, "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": ref}}}}
    if headers:
        response["headers"] = headers
    return response


def _handlers(app: Litestar) -> dict[tuple[str, str], HTTPRouteHandler]:
    """Each documented (path, method) with its handler, as the router resolved it (``opt`` merged)."""
    found: dict[tuple[str, str], HTTPRouteHandler] = {}
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for handler in route.route_handlers:
                for method in handler.http_methods:
                    found[(route.path_format or "/", method.lower())] = handler
    return found


def _request_schemas(handlers: dict[tuple[str, str], HTTPRouteHandler]) -> dict[str, dict[str, Any]]:
    """msgspec's JSON schemas of the handlers' ``data`` types and of the types they contain."""
    types = {
        parameter.annotation
        for handler in handlers.values()
        if (parameter := handler.parsed_fn_signature.parameters.get("data")) is not None
    }
    found: dict[str, dict[str, Any]] = {}
    for kind in sorted(types, key=repr):
        try:
            _, components = msgspec.json.schema_components([kind], ref_template="#/components/schemas/{name}")
        except TypeError:
            continue  # a type msgspec does not describe: Litestar's rendering stays
        found.update(components)
    return {name: _decimals_as_numbers_too(schema) for name, schema in found.items()}


def _decimals_as_numbers_too(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_decimals_as_numbers_too(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    fixed = {key: _decimals_as_numbers_too(value) for key, value in schema.items()}
    if fixed.get("format") == "decimal" and fixed.get("type") == "string":
        fixed["type"] = ["string", "number"]
    return fixed


_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": 'The ETag of the version this change is based on, such as "3"',
    "schema": {"type": "string"},
}


def _versioned(operation: dict[str, Any], schemas: dict[str, Any]) -> bool:
    """Whether ``operation``'s JSON body can name the version it changes (``version``)."""
    body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    ref = body.get("$ref", "")
    schema = schemas.get(ref.rpartition("/")[2], {}) if ref else body
    return "version" in schema.get("properties", {})


_LINKED_METHODS = ("get", "put", "patch", "delete")


def _has_id(schema: dict[str, Any], schemas: dict[str, Any]) -> bool:
    ref = schema.get("$ref", "")
    if ref.startswith("#/components/schemas/"):
        schema = schemas.get(ref.rpartition("/")[2], {})
    return "id" in (schema.get("properties") or {})


def _path_parameters(path: str) -> list[str]:
    return [segment[1:-1] for segment in path.split("/") if segment.startswith("{") and segment.endswith("}")]


def _links(paths: dict[str, Any], schemas: dict[str, Any]) -> None:
    """OpenAPI links from each creating ``POST /x`` (a 201 or 200 answering an object with ``id``)
    to every operation of ``/x/{param}``: ``param`` is the answer's ``id``, and the path
    parameters of ``/x`` are passed on from the request."""
    for path, item in paths.items():
        create = item.get("post")
        if not isinstance(create, dict):
            continue
        responses = create.get("responses", {})
        status = "201" if "201" in responses else "200" if "200" in responses else None
        if status is None:
            continue
        answer = responses[status]
        body = answer.get("content", {}).get("application/json", {}).get("schema", {})
        if not _has_id(body, schemas):
            continue
        shared = _path_parameters(path)
        for target, target_item in paths.items():
            head, _, last = target.rpartition("/")
            if head != path or not (last.startswith("{") and last.endswith("}")):
                continue
            parameters = {last[1:-1]: "$response.body#/id", **{name: f"$request.path.{name}" for name in shared}}
            for method in _LINKED_METHODS:
                operation = target_item.get(method)
                if not isinstance(operation, dict) or "operationId" not in operation:
                    continue
                answer.setdefault("links", {})[operation["operationId"]] = {
                    "operationId": operation["operationId"],
                    "parameters": parameters,
                    "description": f"The {method.upper()} of what this call created",
                }


def complete_document(app: Litestar, document: dict[str, Any]) -> dict[str, Any]:
    """Add security and the error answers to ``document`` (Litestar's, as a dict), in place."""
    components = document.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    schemas = components.setdefault("schemas", {})
    handlers = _handlers(app)
    for name, schema in _request_schemas(handlers).items():
        if schemas.get(name, schema).get("title", name) == name:  # never a same-named other type
            schemas[name] = schema
    schemas.update(_SCHEMAS)
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            handler = handlers.get((path, method))
            if handler is None or not isinstance(operation, dict) or "responses" not in operation:
                continue
            permission = handler.opt.get("permission")
            operation["security"] = [] if permission == PUBLIC else _AUTHENTICATED
            if method == "patch" and _versioned(operation, schemas):
                operation.setdefault("parameters", []).append(_IF_MATCH)
            responses = operation["responses"]
            for status in _statuses(handler, method, operation):
                responses[str(status)] = _problem_response(status)
            data = handler.parsed_fn_signature.parameters.get("data")
            if data is not None and data.has_default and "requestBody" in operation:
                operation["requestBody"]["required"] = False
            raw_body = handler.opt.get(REQUEST_MEDIA_TYPE_OPT)
            if raw_body and "requestBody" not in operation:
                operation["requestBody"] = {"required": True, "content": {raw_body: {"schema": {"type": "string"}}}}
    _links(document.get("paths", {}), schemas)
    return document


class OpenAPIDocument(JsonRenderPlugin):
    """Serves ``openapi.json`` completed by :func:`complete_document` (once; then it is cached)."""

    def __init__(self) -> None:
        super().__init__()
        self._completed: int | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        # Litestar caches the dict it hands in: completing it once, in place, completes it for good.
        if self._completed != id(openapi_schema):
            complete_document(request.app, openapi_schema)
            self._completed = id(openapi_schema)
        return self.render_json(request, openapi_schema)
