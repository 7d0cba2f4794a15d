"""The expression language of node inputs: Jinja2 in the kernel's sandbox (``sdk.TemplateSandbox``,
the one prompt templates render in), so a tenant learns one syntax and the platform guards one
sandbox: unsafe attributes refused, ranges and repetitions capped, a deadline, undefined names as
errors.

Any string of a node's config may hold ``{{ ... }}``. A string that is exactly one ``{{ expr }}``
(spaces around it allowed) yields the expression's value with its type: ``"{{ trigger.items }}"``
is a list, ``"{{ steps.total.output.sum + 1 }}"`` a number. Any other string renders to text
(``"Hello {{ trigger.name }}"``, ``{% if %}`` and ``{% for %}`` blocks included). Dict values and
list items are rendered recursively; keys and non-strings are kept as they are. The names in scope
are listed in ``plugins.workflows.graph``.

Why Jinja rather than JSONata or CEL: prompt templates already use it, so its sandbox, deadline
and error messages exist and are tested; ``compile_expression`` gives typed values; and the
console can show the same syntax everywhere.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from typing import Any

from kernel import sdk

__all__ = ["RENDER_SECONDS", "ExpressionError", "check", "expressions_in", "is_expression", "names_in", "render"]

RENDER_SECONDS = 0.5
"""How long rendering one node's whole config may take (each string gets what is left)."""

_MARKERS = ("{{", "{%", "{#")
_SINGLE = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.DOTALL)


class ExpressionError(Exception):
    """An expression that does not parse or fails to evaluate, at ``path`` of the rendered value
    (``config.body.name``, ``config.items[2]``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def _single(source: str) -> str | None:
    """The expression of a string that is exactly one ``{{ expr }}``, else ``None``."""
    match = _SINGLE.match(source)
    if match is None:
        return None
    expr = match.group("expr")
    # "{{ a }} and {{ b }}" matches the pattern too: it is text, not one expression.
    if "{{" in expr or "}}" in expr:
        return None
    return expr.strip()


def is_expression(value: Any) -> bool:
    """Whether ``value`` is a string the expression language renders (it holds ``{{``, ``{%``
    or ``{#``); other strings are kept verbatim."""
    return isinstance(value, str) and any(m in value for m in _MARKERS)


def check(template: str) -> str | None:
    """Why ``template`` cannot be rendered (``line 1: unexpected '}'``, an unsafe attribute),
    or ``None`` when it parses. Strings without markers always pass."""
    if not is_expression(template):
        return None
    expr = _single(template)
    if expr is not None:
        return sdk.TemplateSandbox.check(expr, expression=True)
    return sdk.TemplateSandbox.check(template)


def names_in(template: str) -> frozenset[str]:
    """The scope names ``template`` reads (``{"trigger", "steps"}``)."""
    if not is_expression(template):
        return frozenset()
    expr = _single(template)
    if expr is not None:
        return sdk.TemplateSandbox.names(expr, expression=True)
    return sdk.TemplateSandbox.names(template)


def expressions_in(value: Any, path: str = "config") -> Iterator[tuple[str, str]]:
    """``(path, string)`` of every string of ``value`` that holds an expression."""
    if isinstance(value, str):
        if is_expression(value):
            yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from expressions_in(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from expressions_in(item, f"{path}[{i}]")


def render(value: Any, scope: Mapping[str, Any], *, deadline: float = RENDER_SECONDS, path: str = "config") -> Any:
    """``value`` with every expression string rendered against ``scope``.

    ``deadline`` is the number of seconds the whole value may take (a runaway loop is stopped
    with an :class:`ExpressionError`). ``path`` names ``value`` in error messages.
    """
    until = time.monotonic() + deadline
    return _render(value, scope, until, path)


def _render(value: Any, scope: Mapping[str, Any], until: float, path: str) -> Any:
    if isinstance(value, str):
        return _render_string(value, scope, until, path) if is_expression(value) else value
    if isinstance(value, Mapping):
        return {key: _render(item, scope, until, f"{path}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_render(item, scope, until, f"{path}[{i}]") for i, item in enumerate(value)]
    return value


def _render_string(source: str, scope: Mapping[str, Any], until: float, path: str) -> Any:
    left = until - time.monotonic()
    if left <= 0:
        raise ExpressionError(path, "rendering ran out of time")
    expr = _single(source)
    try:
        if expr is not None:
            return sdk.TemplateSandbox.evaluate(expr, scope, seconds=left)
        return sdk.TemplateSandbox.render(source, scope, seconds=left)
    except sdk.TemplateFailed as exc:
        raise ExpressionError(path, exc.message) from None
