"""The message of a broadcast: its model, Adaptive Card checks, placeholders, the outgoing activity and its size.

One function builds what is sent (:func:`build_activity`, also exported as :func:`render`) and one measures
it (:func:`activity_size`), so the size the API checks is the size the sender sends.

Placeholders (personalisation from ``audience.users[].data``):

* ``{{name}}`` in ``text`` and ``summary`` (spaces inside the braces allowed: ``{{ name }}``). Values are
  inserted verbatim: Teams renders ``text`` as markdown and we do **not** escape markdown, so a value such as
  ``*Ada*`` shows in bold. Anything else between ``{{`` and ``}}`` (``{{first name}}``, ``{{user.name}}``)
  is rejected, so a mistyped placeholder never reaches thousands of people as literal text.
* ``${name}`` in any string value of the Adaptive Card (the simple property reference of the Adaptive Card
  templating language). Substitution happens in the parsed card, never in its JSON text, so quotes,
  backslashes and newlines in values cannot break the card. Every other ``${...}`` (functions such as
  ``${if(...)}``, paths such as ``${user.name}``, ``${$root...}``) and the ``$data`` / ``$when`` keys are
  rejected: Teams does not expand templates in bot-sent cards, so they would show literally. ``{{name}}`` in a
  card is rejected too, with a hint to write ``${name}``.
* Values become text: strings as they are, numbers in JSON notation, booleans as ``true`` / ``false``,
  ``null`` as the empty string. A whole-string ``"${flag}"`` stays a string (no type changes in the card).

Size: Teams accepts about 100 KB per bot message, counted in UTF-16; the facts sheet says keep under 80 KB.
:data:`DEFAULT_MAX_MESSAGE_BYTES` is 80 KiB = 81,920 bytes of the compact JSON of the activity
(``ensure_ascii=False``) encoded as UTF-16-LE, inclusive; the ~18 KB left below 100,000 bytes covers what
the sender adds around it (``from``, ``conversation``, ``channelData``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Self

from pydantic import field_validator, model_validator
from pydantic_core import PydanticCustomError

from proactive.errors import InvalidInput
from proactive.models import JsonScalar, WireModel

DEFAULT_MAX_MESSAGE_BYTES = 80 * 1024
ADAPTIVE_CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
MAX_CARD_VERSION = (1, 5)  # Teams renders 1.5 and earlier for bot-sent cards (facts sheet, section 3)

PLACEHOLDER_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,63}"
_TEXT_PLACEHOLDER = re.compile(r"\{\{\s*(" + PLACEHOLDER_NAME + r")\s*\}\}")
# Something that looks like a placeholder: short, on one line, no braces inside.
_TEXT_PLACEHOLDER_LIKE = re.compile(r"\{\{([^{}\n]{0,100})\}\}")
_CARD_PLACEHOLDER = re.compile(r"\$\{\s*(" + PLACEHOLDER_NAME + r")\s*\}")
_CARD_EXPRESSION_START = "${"
_TEMPLATE_KEYS = frozenset({"$data", "$when"})
_CARD_VERSION = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})")
_PATH_KEY = re.compile(r"[A-Za-z0-9_$@-]{1,64}")
_MAX_CARD_PROBLEMS = 20


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request: where (dotted/indexed camelCase path), a stable code, and why.

    Attributes:
        field: the path as the caller wrote it, e.g. ``audience.users[3].aadObjectId``; ``""`` is the body.
        code: a stable machine-readable code such as ``invalid_guid``.
        message: a short human explanation that never echoes more than a few dozen characters of input.
        extra: more JSON-able detail (``size``, ``limit``, ...), merged into the error detail.
    """

    field: str
    code: str
    message: str
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_detail(self) -> dict[str, Any]:
        """The entry of the error body's ``details`` list."""
        return {"field": self.field, "code": self.code, "message": self.message, **self.extra}


def show(value: object, limit: int = 40) -> str:
    """A short, safe rendering of caller input for error messages (never echo huge inputs)."""
    if not isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False, default=str)
        return text if len(text) <= limit else text[:limit] + "..."
    text = value if len(value) <= limit else value[:limit] + "..."
    return json.dumps(text, ensure_ascii=False)


def concat_path(base: str, sub: str) -> str:
    """Append a relative path: ``concat_path("message.adaptiveCard", "body[0].text")``."""
    if not base or not sub:
        return base or sub
    return base + sub if sub.startswith("[") else f"{base}.{sub}"


def join_path(base: str, part: str | int) -> str:
    """``join_path("a", "b") == "a.b"``, ``join_path("a", 3) == "a[3]"``; odd keys are quoted."""
    if isinstance(part, int):
        return f"{base}[{part}]"
    if not _PATH_KEY.fullmatch(part):
        return f"{base}[{show(part, 64)}]"
    return f"{base}.{part}" if base else part


class MessageContent(WireModel):
    """What a broadcast says: ``text`` (markdown) and/or an Adaptive Card, and the notification ``summary``.

    Empty or whitespace-only ``text`` / ``summary`` count as absent (flow tools often send ``""`` for an
    unused field). The card is checked by :func:`card_problems`.
    """

    text: str | None = None
    adaptive_card: dict[str, Any] | None = None
    summary: str | None = None

    @field_validator("text", "summary")
    @classmethod
    def _text_placeholders(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        for match in _TEXT_PLACEHOLDER_LIKE.finditer(value):
            if not _TEXT_PLACEHOLDER.fullmatch(match.group(0)):
                raise PydanticCustomError(
                    "invalid_placeholder",
                    "{{...}} must hold a single name of letters, digits and _ (like {{firstName}}); "
                    "got " + show(match.group(0)),
                )
        return value

    @field_validator("adaptive_card")
    @classmethod
    def _card(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        problems = card_problems(value)
        if problems:
            first = problems[0]
            # One pydantic error can carry only one location: the rest travel in ctx and are expanded
            # into their own details by the request parser (see broadcast_request._pydantic_problems).
            raise PydanticCustomError(
                first.code,
                first.message,
                {"problems": [(p.field, p.code, p.message) for p in problems]},
            )
        return value

    @model_validator(mode="after")
    def _text_or_card(self) -> Self:
        if self.text is None and self.adaptive_card is None:
            raise PydanticCustomError("message_empty", "message needs text and/or adaptiveCard")
        return self


def card_problems(card: Mapping[str, Any]) -> list[Problem]:
    """Everything wrong with an Adaptive Card, with paths relative to the card (``body[0].text``).

    Checks: ``type == "AdaptiveCard"``; ``version`` a ``major.minor`` string no newer than 1.5;
    ``body`` / ``actions`` arrays when present; no ``$data`` / ``$when`` keys and no ``${...}`` other than a
    simple ``${name}``; no ``{{name}}`` (text syntax); no non-finite numbers. At most 20 problems.
    """
    problems: list[Problem] = []
    if card.get("type") != "AdaptiveCard":
        problems.append(Problem("type", "invalid_card", 'the card\'s "type" must be "AdaptiveCard"'))
    version = card.get("version")
    if version is None:
        problems.append(Problem("version", "invalid_card", 'the card needs a "version" such as "1.5"'))
    elif not isinstance(version, str) or not _CARD_VERSION.fullmatch(version):
        problems.append(
            Problem("version", "invalid_card", f'"version" must be a string like "1.5", got {show(version)}')
        )
    else:
        major, minor = (int(part) for part in version.split("."))
        if (major, minor) > MAX_CARD_VERSION:
            problems.append(
                Problem(
                    "version",
                    "unsupported_card_version",
                    f"Teams renders Adaptive Cards up to version 1.5 in bot messages; got {show(version)}",
                )
            )
    for key in ("body", "actions"):
        if key in card and not isinstance(card[key], list):
            problems.append(Problem(key, "invalid_card", f'"{key}" must be an array'))
    for path, node in _walk(card, ""):
        if len(problems) >= _MAX_CARD_PROBLEMS:
            break
        if isinstance(node, dict):
            for key in _TEMPLATE_KEYS.intersection(node):
                problems.append(
                    Problem(
                        join_path(path, key),
                        "unsupported_template_expression",
                        f"{key} (templating) is not evaluated; send the expanded card, using only "
                        "${name} placeholders",
                    )
                )
        elif isinstance(node, str):
            problem = _card_string_problem(path, node)
            if problem is not None:
                problems.append(problem)
        elif isinstance(node, float) and not math.isfinite(node):
            problems.append(Problem(path, "invalid_card", "numbers must be finite"))
    return problems[:_MAX_CARD_PROBLEMS]


def _card_string_problem(path: str, value: str) -> Problem | None:
    start = value.find(_CARD_EXPRESSION_START)
    while start != -1:
        match = _CARD_PLACEHOLDER.match(value, start)
        if match is None:
            end = value.find("}", start)
            expression = value[start : end + 1] if end != -1 else value[start:]
            return Problem(
                path,
                "unsupported_template_expression",
                f"only simple placeholders like ${{name}} are filled; {show(expression)} (an expression, "
                "path or function) would reach recipients as literal text",
            )
        start = value.find(_CARD_EXPRESSION_START, match.end())
    text_placeholder = _TEXT_PLACEHOLDER.search(value)
    if text_placeholder is not None:
        name = text_placeholder.group(1)
        return Problem(
            path, "invalid_placeholder", f"in an Adaptive Card write ${{{name}}}, not {{{{{name}}}}}"
        )
    return None


def _walk(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    # Iterative: the parser bounds nesting, but a walker should not depend on the recursion limit.
    stack: list[tuple[str, Any]] = [(path, node)]
    while stack:
        current_path, current = stack.pop()
        yield current_path, current
        if isinstance(current, dict):
            stack.extend((join_path(current_path, k), v) for k, v in reversed(current.items()))
        elif isinstance(current, list):
            stack.extend((join_path(current_path, i), v) for i, v in reversed(list(enumerate(current))))


def placeholders(message: MessageContent) -> frozenset[str]:
    """The names of every placeholder the message uses (``{{name}}`` in text/summary, ``${name}`` in the card)."""
    return frozenset(_placeholder_counts(message))


def _placeholder_counts(message: MessageContent) -> Counter[str]:
    counts: Counter[str] = Counter()
    for text in (message.text, message.summary):
        if text is not None:
            counts.update(m.group(1) for m in _TEXT_PLACEHOLDER.finditer(text))
    if message.adaptive_card is not None:
        for _, node in _walk(message.adaptive_card, ""):
            if isinstance(node, str) and _CARD_EXPRESSION_START in node:
                counts.update(m.group(1) for m in _CARD_PLACEHOLDER.finditer(node))
    return counts


def value_text(value: JsonScalar) -> str:
    """How a personalisation value reads once substituted (see the module docstring)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value)  # true/false, 42, 1.5, 1e+100


def _fill(pattern: re.Pattern[str], text: str, data: Mapping[str, JsonScalar]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in data:
            raise InvalidInput(
                f"no value for placeholder {name!r}", code="missing_placeholder_value", field=f"data.{name}"
            )
        return value_text(data[name])

    return pattern.sub(replace, text)


def _fill_card(node: Any, data: Mapping[str, JsonScalar]) -> Any:
    if isinstance(node, str):
        return _fill(_CARD_PLACEHOLDER, node, data) if _CARD_EXPRESSION_START in node else node
    if isinstance(node, dict):
        return {key: _fill_card(value, data) for key, value in node.items()}
    if isinstance(node, list):
        return [_fill_card(item, data) for item in node]
    return node


def build_activity(message: MessageContent, data: Mapping[str, JsonScalar] | None = None) -> dict[str, Any]:
    """The Bot Framework activity sent for ``message``, with its placeholders filled from ``data``.

    ``{"type": "message", "text", "summary", "attachments": [{"contentType":
    "application/vnd.microsoft.card.adaptive", "content": card}]}``; absent parts are left out. The sender
    sends this (serialised by :func:`serialize_activity`) and the API measured it with :func:`activity_size`.

    Raises:
        InvalidInput: a placeholder has no value in ``data`` (the API checks this before accepting).
    """
    values: Mapping[str, JsonScalar] = data or {}
    activity: dict[str, Any] = {"type": "message"}
    if message.text is not None:
        activity["text"] = _fill(_TEXT_PLACEHOLDER, message.text, values)
    if message.summary is not None:
        activity["summary"] = _fill(_TEXT_PLACEHOLDER, message.summary, values)
    if message.adaptive_card is not None:
        activity["attachments"] = [
            {"contentType": ADAPTIVE_CARD_CONTENT_TYPE, "content": _fill_card(message.adaptive_card, values)}
        ]
    return activity


def render(message: MessageContent, data: Mapping[str, JsonScalar] | None = None) -> dict[str, Any]:
    """The activity for one recipient at send time: the same function as :func:`build_activity`."""
    return build_activity(message, data)


def serialize_activity(activity: Mapping[str, Any]) -> str:
    """The JSON text of an activity as sent and as measured: compact, non-ASCII kept as is."""
    return json.dumps(activity, ensure_ascii=False, separators=(",", ":"))


def utf16_size(text: str) -> int:
    """Bytes of ``text`` in UTF-16 (what Teams counts); astral characters count 4."""
    return len(text.encode("utf-16-le", "surrogatepass"))


def activity_size(activity: Mapping[str, Any]) -> int:
    """The size Teams counts for ``activity``: UTF-16 bytes of :func:`serialize_activity`."""
    return utf16_size(serialize_activity(activity))


def _escaped_size(text: str) -> int:
    # The UTF-16 size of ``text`` inside a JSON string: quotes, backslashes and control characters grow.
    return utf16_size(json.dumps(text, ensure_ascii=False)) - 4


class ActivitySizer:
    """The exact rendered size of a message for many recipients without rendering it for each.

    Placeholders sit inside JSON strings and JSON escaping works character by character, so the size of the
    rendered activity is the size with every placeholder replaced by ``""`` plus, for each placeholder
    occurrence, the escaped UTF-16 size of its value. The API uses this to check the limit for every user of
    a 10,000-user request in a few milliseconds.
    """

    def __init__(self, message: MessageContent) -> None:
        self._counts = _placeholder_counts(message)
        self.base_size = activity_size(build_activity(message, dict.fromkeys(self._counts, "")))

    def size(self, data: Mapping[str, JsonScalar]) -> int:
        """The :func:`activity_size` of :func:`build_activity` ``(message, data)``."""
        return self.base_size + sum(
            count * _escaped_size(value_text(data.get(name))) for name, count in self._counts.items()
        )


__all__ = [
    "ADAPTIVE_CARD_CONTENT_TYPE",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAX_CARD_VERSION",
    "PLACEHOLDER_NAME",
    "ActivitySizer",
    "MessageContent",
    "Problem",
    "activity_size",
    "build_activity",
    "card_problems",
    "concat_path",
    "join_path",
    "placeholders",
    "render",
    "serialize_activity",
    "show",
    "utf16_size",
    "value_text",
]
