"""The one sandbox user-written templates and expressions run in: prompt templates
(``kernel.ai.prompts``) and workflow node inputs (``sdk.TemplateSandbox``).

Jinja2's :class:`~jinja2.sandbox.SandboxedEnvironment` refuses attributes it deems unsafe
(``__class__``, ``mro``, ``func_globals``...); on top of it ``range`` is capped, ``*`` and ``**``
cannot build huge values, only harmless globals exist, and :class:`Deadline` stops a render that
runs past its time (nested loops over inputs can spin for hours without producing output).
Undefined names are errors, never empty strings.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import FrameType
from typing import Any

from jinja2 import StrictUndefined, Template, meta, nodes
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError, UndefinedError
from jinja2.runtime import Undefined
from jinja2.sandbox import SandboxedEnvironment

__all__ = [
    "ENV",
    "MAX_OUTPUT",
    "RENDER_SECONDS",
    "Deadline",
    "TemplateFailed",
    "TemplateSandbox",
    "unsafe_attribute",
]

MAX_OUTPUT = 200_000
"""Characters a render may produce."""
RENDER_SECONDS = 0.25
"""How long one render may take by default."""
_MAX_RANGE = 1000
_MAX_SEQUENCE = 100_000


class _Sandbox(SandboxedEnvironment):
    """The sandbox, with the arithmetic that can allocate without bound checked."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
            raise SecurityError("exponent too large")
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(count, int) and len(seq) * count > _MAX_SEQUENCE:
                    raise SecurityError("repetition too large")
        return super().call_binop(context, operator, left, right)


def _range(*args: int) -> range:
    values = range(*args)
    if len(values) > _MAX_RANGE:
        raise SecurityError(f"range is limited to {_MAX_RANGE} items")
    return values


def _environment(undefined: type[Undefined]) -> _Sandbox:
    env = _Sandbox(undefined=undefined, autoescape=False, keep_trailing_newline=True)
    # Only harmless helpers: lipsum, cycler and joiner add nothing a template needs.
    env.globals.clear()
    env.globals.update({"range": _range, "dict": dict})
    return env


ENV = _environment(StrictUndefined)
"""The prompt templates' environment (its undefined-name messages are the stock ones)."""


class Deadline:
    """A trace function that stops a render running past its time. It checks the clock every
    1,024 traced lines; install it with :func:`deadline` (synchronous code only: no other
    coroutine runs meanwhile)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.until = time.monotonic() + seconds
        self.events = 0

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Deadline:
        self.events += 1
        if not self.events & 1023 and time.monotonic() > self.until:
            raise SecurityError(f"rendering took longer than {self.seconds:g} s")
        return self


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Stop the synchronous code of the block (with :class:`SecurityError`) after ``seconds``."""
    previous = sys.gettrace()
    sys.settrace(Deadline(seconds))
    try:
        yield
    finally:
        sys.settrace(previous)


def unsafe_attribute(tree: nodes.Template) -> str | None:
    """The first attribute ``tree`` reads by a constant name starting with ``_`` (which the
    sandbox refuses anyway at render time: this lets a template be refused when it is saved)."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        name: Any = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value
        elif isinstance(node, nodes.Filter) and node.name == "attr" and node.args:
            arg = node.args[0]
            name = arg.value if isinstance(arg, nodes.Const) else None
        if isinstance(name, str) and name.startswith("_"):
            return name
    return None


class _NamedUndefined(StrictUndefined):
    """Says which keys a mapping has when one is missing: ``'dict object' has no attribute
    'x' (keys: a, b)`` helps whoever wrote ``steps.x`` find the step they meant."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        message: str = super()._undefined_message
        obj = self._undefined_obj
        if isinstance(obj, Mapping) and self._undefined_name is not None:
            keys = ", ".join(sorted(str(k) for k in list(obj)[:50]))
            message += f" (keys: {keys or 'none'})"
        return message


class _DataSandbox(_Sandbox):
    """For data (JSON objects): ``trigger.items`` is the key ``items``, not ``dict.items``; a key
    a mapping lacks still finds its methods (``trigger.get('x', 1)``)."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping):
            try:
                return obj[attribute]
            except (KeyError, TypeError):
                pass
        return super().getattr(obj, attribute)


_EXPRESSIONS = _DataSandbox(undefined=_NamedUndefined, autoescape=False, keep_trailing_newline=True)
_EXPRESSIONS.globals.clear()
_EXPRESSIONS.globals.update({"range": _range, "dict": dict})


class TemplateFailed(Exception):
    """A template or expression that does not parse, reads an undefined name, is refused by the
    sandbox or fails while it runs; ``kind`` says which (``syntax``, ``undefined``, ``refused``,
    ``error``) and ``message`` says what, for a person."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@functools.lru_cache(maxsize=2048)
def _template(source: str) -> Template:
    return _EXPRESSIONS.from_string(source)


@functools.lru_cache(maxsize=2048)
def _expression(source: str) -> Any:
    return _EXPRESSIONS.compile_expression(source, undefined_to_none=False)


@contextmanager
def _failures() -> Iterator[None]:
    try:
        yield
    except UndefinedError as exc:
        raise TemplateFailed("undefined", str(exc.message or exc)) from None
    except SecurityError as exc:
        raise TemplateFailed("refused", f"refused by the sandbox: {exc}") from None
    except TemplateSyntaxError as exc:
        raise TemplateFailed("syntax", f"line {exc.lineno}: {exc.message}") from None
    except TemplateError as exc:
        raise TemplateFailed("error", str(exc)) from None
    except (ArithmeticError, TypeError, ValueError, LookupError, AttributeError, RecursionError) as exc:
        raise TemplateFailed("error", f"{type(exc).__name__}: {str(exc)[:200]}") from None


class TemplateSandbox:
    """Templates and expressions that tenants write, run in the kernel's sandbox (the one prompt
    templates render in): refused unsafe attributes, capped ranges and repetitions, no globals
    but ``range`` and ``dict``, undefined names as errors, a deadline and an output cap.

    Every failure is a :class:`TemplateFailed`.
    """

    @staticmethod
    def check(source: str, *, expression: bool = False) -> str | None:
        """Why ``source`` (a template, or with ``expression`` a bare expression) cannot run: a
        parse error (``line 1: ...``) or an unsafe attribute; ``None`` when it can."""
        try:
            tree = _EXPRESSIONS.parse("{{ (" + source + ") }}" if expression else source)
        except TemplateSyntaxError as exc:
            return f"line {exc.lineno}: {exc.message}"
        unsafe = unsafe_attribute(tree)
        if unsafe is not None:
            return f"uses the attribute {unsafe!r}, which expressions may not access"
        return None

    @staticmethod
    def names(source: str, *, expression: bool = False) -> frozenset[str]:
        """The names ``source`` reads from its scope (its loop variables and the globals
        ``range`` and ``dict`` left out); empty when it does not parse."""
        try:
            tree = _EXPRESSIONS.parse("{{ (" + source + ") }}" if expression else source)
        except TemplateSyntaxError:
            return frozenset()
        return frozenset(meta.find_undeclared_variables(tree) - set(_EXPRESSIONS.globals))

    @staticmethod
    def render(source: str, scope: Mapping[str, Any], *, seconds: float = RENDER_SECONDS) -> str:
        """The text ``source`` renders to with the names of ``scope``."""
        out: list[str] = []
        size = 0
        with _failures():
            template = _template(source)
            with deadline(seconds):
                for piece in template.generate(**scope):
                    size += len(piece)
                    if size > MAX_OUTPUT:
                        raise SecurityError(f"the rendered text is longer than {MAX_OUTPUT} characters")
                    out.append(piece)
        return "".join(out)

    @staticmethod
    def evaluate(expression: str, scope: Mapping[str, Any], *, seconds: float = RENDER_SECONDS) -> Any:
        """The value of the bare expression ``expression`` (``steps.a.output.items | length``)
        with the names of ``scope``, with its type: a list stays a list, a number a number."""
        with _failures():
            compiled = _expression(expression)
            with deadline(seconds):
                value = compiled(**scope)
            if isinstance(value, Undefined):
                value._fail_with_undefined_error()
        return value

