"""The workflows' expression language: typed values, text, the sandbox, the deadline, errors."""

from __future__ import annotations

import time
from typing import Any

import pytest

from plugins.workflows.expressions import ExpressionError, check, names_in, render

SCOPE: dict[str, Any] = {
    "trigger": {"name": "Ada", "items": [1, 2, 3], "n": 4, "nested": {"ok": True}},
    "steps": {"fetch": {"output": {"status": 200, "body": {"names": ["a", "b"]}}}},
    "env": {"region": "eu"},
    "execution": {"id": "x"},
}


def test_a_lone_expression_keeps_its_type_and_text_renders_to_text() -> None:
    config = {
        "items": "{{ trigger.items }}",
        "count": "{{ trigger.items | length }}",
        "sum": "{{ trigger.n * 2.5 }}",
        "flag": " {{ trigger.nested.ok }} ",
        "none": "{{ none }}",
        "greeting": "Hello {{ trigger.name }} from {{ env.region }}",
        "two": "{{ trigger.n }}{{ trigger.n }}",
        "list": ["{{ steps.fetch.output.status }}", "plain", 7, {"deep": "{{ steps.fetch.output.body.names[1] }}"}],
        "loop": "{% for i in trigger.items %}{{ i }},{% endfor %}",
        "literal": "no braces here",
    }
    out = render(config, SCOPE)
    assert out == {
        "items": [1, 2, 3],
        "count": 3,
        "sum": 10.0,
        "flag": True,
        "none": None,
        "greeting": "Hello Ada from eu",
        "two": "44",
        "list": [200, "plain", 7, {"deep": "b"}],
        "loop": "1,2,3,",
        "literal": "no braces here",
    }
    assert type(out["count"]) is int and type(out["items"]) is list


def test_undefined_names_and_keys_are_reported_with_their_path() -> None:
    with pytest.raises(ExpressionError) as missing:
        render({"body": {"name": "{{ trigger.nmae }}"}}, SCOPE)
    assert missing.value.path == "config.body.name"
    assert "nmae" in missing.value.message and "keys: items, n, name, nested" in missing.value.message
    with pytest.raises(ExpressionError) as unknown:
        render({"to": ["x", "Hi {{ nobody }}"]}, SCOPE)
    assert unknown.value.path == "config.to[1]" and "'nobody' is undefined" in unknown.value.message
    with pytest.raises(ExpressionError) as step:
        render({"a": "{{ steps.fetc.output }}"}, SCOPE)
    assert "fetc" in step.value.message and "keys: fetch" in step.value.message


@pytest.mark.parametrize(
    "source",
    [
        "{{ trigger.__class__ }}",
        "{{ trigger.name.__class__.__mro__ }}",
        "{{ ''.__class__.mro() }}",
        "{{ (trigger|attr('__class__')) }}",
        "{{ trigger['__class__'] }}",
        "x {{ range.__globals__ }}",
    ],
)
def test_sandbox_escapes_are_refused_when_checked_and_when_rendered(source: str) -> None:
    assert check(source) is not None
    with pytest.raises(ExpressionError) as refused:
        render({"v": source}, SCOPE)
    assert refused.value.path == "config.v"


def test_sandbox_refuses_unsafe_calls_at_render_time() -> None:
    # Not visible in the syntax tree: a method the sandbox will not call, a huge repetition.
    with pytest.raises(ExpressionError, match=r"sandbox|unsafe|refused"):
        render({"v": "{{ trigger.items.append.__self__ }}"}, SCOPE)
    with pytest.raises(ExpressionError, match="too large"):
        render({"v": "{{ 'x' * 10000000 }}"}, SCOPE)
    with pytest.raises(ExpressionError, match="range"):
        render({"v": "{{ range(10000000) | list }}"}, SCOPE)


def test_a_runaway_template_is_stopped_by_the_deadline() -> None:
    source = "".join(f"{{% for {v} in range(1000) %}}" for v in "abc") + "{% endfor %}" * 3
    started = time.monotonic()
    with pytest.raises(ExpressionError) as slow:
        render({"v": source}, {}, deadline=0.2)
    assert time.monotonic() - started < 5
    assert slow.value.path == "config.v" and "longer than" in slow.value.message


def test_check_reports_parse_errors_and_names_in_lists_the_scope_names_read() -> None:
    assert check("{{ trigger.name }}") is None
    assert check("plain text") is None
    assert check("Hi {% for x in trigger.items %}{{ x }}{% endfor %}") is None
    bad = check("{{ trigger.name ")
    assert bad is not None and bad.startswith("line 1")
    assert check("{{ a b }}") is not None
    assert check("{% if %}") is not None
    assert names_in("{{ trigger.a + steps.b.output | length }}") == {"trigger", "steps"}
    assert names_in("{% for x in trigger.items %}{{ x }}{{ range(2) }}{% endfor %}") == {"trigger"}


def test_evaluation_errors_name_the_path() -> None:
    with pytest.raises(ExpressionError) as division:
        render({"a": {"b": "{{ 1 / 0 }}"}}, SCOPE)
    assert division.value.path == "config.a.b" and "ZeroDivisionError" in division.value.message
