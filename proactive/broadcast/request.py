"""``POST /api/broadcasts``: from request body bytes to a validated, frozen :class:`BroadcastRequest`.

:func:`parse_broadcast_request` either returns the request or raises
:class:`~proactive.errors.InvalidInput` whose ``to_body()`` is the contract's
``{"error": {"code", "message", "details"}}``. ``details`` lists every problem found as
``{"field": "audience.users[3].aadObjectId", "code": ..., "message": ...}``, with paths as the caller
wrote them (camelCase, indexes of the caller's lists before duplicates are removed). ``field`` ``""`` is
the body as a whole. ``code`` at the top is the problems' code when they share one, else
``invalid_request``. At most ``limits.max_error_details`` details are listed.

Checks run in three steps, each only when the one before found nothing (so one bad field does not drown
in consequential errors):

1. the raw body: at most ``max_body_bytes`` (413 ``body_too_large``), UTF-8 (a leading BOM is ignored), JSON
   without duplicate keys, ``NaN`` or ``Infinity``, nested at most ``max_json_depth`` deep, an object, and at
   most ``max_recipients_per_request`` ids in ``audience`` (413 ``too_many_recipients``: the request is too
   big to handle as one; split it, or address whole tenants);
2. shapes and formats (pydantic, strict JSON types, unknown fields rejected as ``unknown_field``);
3. rules across fields: audience composition, schedule, placeholders against each user's data, per-user
   data size, message size for every recipient (413 ``message_too_large``), conflicting duplicates.

Decisions the contract leaves open:

* 413 answers every size problem (body, ids per request, message, per-user data) and is used only when
  every problem found is a size problem; anything else makes it 400.
* GUIDs (tenant, user, group ids) are stored lower-case. Exact duplicates in ``users``, ``channels`` and
  ``tenants`` are removed silently (first occurrence kept); the same user (tenant + aadObjectId) twice with
  *different* ``data`` is a 400 ``conflicting_duplicate``, as is one channel listed under two teams.
* ``sendAt`` must carry an offset (``Z`` or ``+hh:mm``); it is stored in UTC; one at or before ``now``
  means "send now" and is returned as ``None``; one more than ``max_schedule_ahead`` ahead is a 400.
* Placeholders are only allowed when every target is an explicit user (``users``): channels and tenants
  have no per-recipient data. Every user must have a value for every placeholder the message uses.
* ``groups`` are Entra groups whose transitive *user* members are resolved through Graph when the audience
  is materialised; ``includeUninstalled`` (only meaningful with ``tenants``) adds every user Graph lists in
  those tenants. Recipients found this way without a reference are installed first (``installs`` queue).
  Guests are left out of both unless ``includeGuests`` is true.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, NoReturn

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from proactive.broadcast.message import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ActivitySizer,
    MessageContent,
    Problem,
    concat_path,
    join_path,
    placeholders,
    show,
)
from proactive.errors import InvalidInput
from proactive.models import (
    CATEGORY_RULE,
    JsonScalar,
    Recipient,
    RecipientKind,
    Urgency,
    WireModel,
    normalise_category,
)

# Always fullmatch: with re.match, "$" also matches before a trailing newline ("deployments\n" passed).
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_NOTIFICATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TEAMS_ID = re.compile(r"[^\s\x00-\x1f\x7f]{1,256}")
_SEND_AT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?(?P<offset>Z|[+-][0-9]{2}:[0-9]{2})?"
)
_SIZE_CODES = frozenset({"body_too_large", "too_many_recipients", "message_too_large", "user_data_too_large"})
_AUDIENCE_LISTS = ("users", "channels", "groups", "tenants")


@dataclass(frozen=True)
class BroadcastLimits:
    """The limits :func:`parse_broadcast_request` enforces. Defaults are the documented ones.

    Attributes:
        max_body_bytes: raw body cap, checked before parsing (413).
        max_json_depth: deepest nesting of arrays/objects in the body (a realistic card needs about 15).
        max_recipients_per_request: ids in ``users`` + ``channels`` + ``groups`` + ``tenants`` (413).
        max_schedule_ahead: how far ahead ``sendAt`` may be.
        max_message_bytes: the activity's UTF-16 JSON size, inclusive (413); 80 KiB, see
            :mod:`proactive.broadcast.message`.
        max_user_data_bytes: compact UTF-8 JSON of one user's ``data`` (it is stored on each ledger row,
            whose properties Table Storage caps at 64 KiB) (413).
        max_error_details: how many problems the error body lists.
    """

    max_body_bytes: int = 2 * 1024 * 1024
    max_json_depth: int = 64
    max_recipients_per_request: int = 10_000
    max_schedule_ahead: timedelta = timedelta(days=30)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_user_data_bytes: int = 16 * 1024
    max_error_details: int = 100


def _guid(value: str) -> str:
    if not _GUID.fullmatch(value):
        raise PydanticCustomError(
            "invalid_guid", f"must be a GUID like 72f988bf-86f1-41af-91ab-2d7cd011db47, got {show(value)}"
        )
    return value.lower()


def _teams_id(value: str) -> str:
    if not _TEAMS_ID.fullmatch(value):
        raise PydanticCustomError(
            "invalid_id",
            "must be a Teams id (1-256 characters, no spaces or control characters, like "
            f"19:abc@thread.tacv2), got {show(value)}",
        )
    return value


def _flat_value(value: Any) -> Any:
    if isinstance(value, dict | list):
        raise PydanticCustomError(
            "nested_data",
            "personalisation values must be strings, numbers, booleans or null, not objects or arrays",
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError("invalid_field", "numbers must be finite")
    return value


def _null_is_empty(value: Any) -> Any:
    return {} if value is None else value


Guid = Annotated[str, AfterValidator(_guid)]
TeamsId = Annotated[str, AfterValidator(_teams_id)]
DataValue = Annotated[JsonScalar, BeforeValidator(_flat_value)]


class UserTarget(WireModel):
    """A user addressed in their personal chat with the bot, with the data that fills placeholders."""

    tenant_id: Guid
    aad_object_id: Guid
    data: Annotated[dict[str, DataValue], BeforeValidator(_null_is_empty)] = Field(default_factory=dict)

    @field_validator("data")
    @classmethod
    def _keys(cls, value: dict[str, JsonScalar]) -> dict[str, JsonScalar]:
        for key in value:
            if not 1 <= len(key) <= 64:
                raise PydanticCustomError(
                    "invalid_data_key", f"data keys must be 1-64 characters, got {show(key)}"
                )
        return value


class ChannelTarget(WireModel):
    """A team's channel."""

    tenant_id: Guid
    team_id: TeamsId
    channel_id: TeamsId


class GroupTarget(WireModel):
    """An Entra group, resolved to its transitive user members through Graph when materialised."""

    tenant_id: Guid
    group_id: Guid


class Audience(WireModel):
    """Who receives a broadcast: lists combine."""

    users: tuple[UserTarget, ...] = ()
    channels: tuple[ChannelTarget, ...] = ()
    groups: tuple[GroupTarget, ...] = ()
    tenants: tuple[Guid, ...] = ()
    include_uninstalled: bool = False
    include_guests: bool = False


def _notification_id(value: str | None) -> str | None:
    if value is not None and not _NOTIFICATION_ID.fullmatch(value):
        bad = sorted(set(re.findall(r"[^A-Za-z0-9_-]", value)))
        why = f"contains {show(''.join(bad[:5]))}" if bad else f"has {len(value)} characters"
        raise PydanticCustomError(
            "invalid_notification_id",
            "must be 1-64 letters, digits, '-' or '_' (it becomes part of URLs and storage keys, so "
            f"characters such as / # ? are not allowed); it {why}",
        )
    return value


def _category(value: str | None) -> str | None:
    if value is None:
        return None
    category = normalise_category(value)
    if category is None:
        raise PydanticCustomError("invalid_category", f"must be {CATEGORY_RULE}, got {show(value)}")
    return category


def _send_at(value: Any) -> Any:
    if value is None or isinstance(value, datetime):
        return value
    match = _SEND_AT.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise PydanticCustomError(
            "invalid_send_at",
            f"must be an ISO-8601 date and time with an offset, like 2026-11-21T09:00:00Z; got {show(value)}",
        )
    if match.group("offset") is None:
        raise PydanticCustomError(
            "invalid_send_at",
            f"has no UTC offset, so its time is ambiguous: add Z or +hh:mm (got {show(value)})",
        )
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    # Python 3.11 parses at most microseconds; trim nanoseconds that some callers send.
    text = re.sub(r"(\.[0-9]{6})[0-9]+", r"\1", text)
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise PydanticCustomError("invalid_send_at", f"is not a real date and time: {show(value)}") from None


class BroadcastRequest(WireModel):
    """A validated ``POST /api/broadcasts`` body. Build with :func:`parse_broadcast_request`.

    ``send_at`` is ``None`` (send now) or a UTC time in the future of the ``now`` it was parsed with.
    """

    notification_id: Annotated[str | None, AfterValidator(_notification_id)] = None
    audience: Audience
    message: MessageContent
    category: Annotated[str | None, AfterValidator(_category)] = None
    urgency: Urgency = Urgency.NORMAL
    send_at: Annotated[datetime | None, BeforeValidator(_send_at)] = None

    def recipients(self) -> tuple[Recipient, ...]:
        """The explicit recipients (``users`` and ``channels``); ``tenants`` are resolved elsewhere."""
        users = (
            Recipient(
                tenant_id=u.tenant_id, kind=RecipientKind.USER, recipient_id=u.aad_object_id, data=u.data
            )
            for u in self.audience.users
        )
        channels = (
            Recipient(
                tenant_id=c.tenant_id,
                kind=RecipientKind.CHANNEL,
                recipient_id=c.channel_id,
                team_id=c.team_id,
            )
            for c in self.audience.channels
        )
        return (*users, *channels)


def parse_broadcast_request(
    body: bytes, *, now: datetime, limits: BroadcastLimits | None = None
) -> BroadcastRequest:
    """Turn a ``POST /api/broadcasts`` body into a validated request (see the module docstring).

    Args:
        body: the raw request body.
        now: the current time (timezone-aware); ``sendAt`` is judged against it.
        limits: the limits to enforce; the defaults when ``None``.

    Returns:
        The request, with duplicates removed, GUIDs lower-cased and a past ``sendAt`` as ``None``.

    Raises:
        InvalidInput: anything wrong with the body; ``status`` is 400 or 413 and ``details`` lists every
            problem found.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    limits = limits or BroadcastLimits()
    text = _check_raw(body, limits)
    try:
        request = BroadcastRequest.model_validate_json(text, strict=True, by_alias=True, by_name=False)
    except ValidationError as exc:
        _fail(_pydantic_problems(exc), limits)
    problems = _rules(request, now, limits)
    if problems:
        _fail(problems, limits)
    return _normalised(request, now)


def _check_raw(body: bytes, limits: BroadcastLimits) -> str:
    if len(body) > limits.max_body_bytes:
        _fail(
            [
                Problem(
                    "",
                    "body_too_large",
                    f"the body is {len(body):,} bytes; the limit is {limits.max_body_bytes:,}",
                    {"size": len(body), "limit": limits.max_body_bytes},
                )
            ],
            limits,
        )
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        _fail([Problem("", "invalid_utf8", f"the body is not UTF-8 (byte {exc.start})")], limits)
    text = text.removeprefix("\ufeff")
    if not text.strip():
        _fail([Problem("", "invalid_json", "the body is empty; send a JSON object")], limits)
    try:
        parsed = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except _DuplicateKey as exc:
        _fail([Problem("", "duplicate_key", f"key {show(exc.key)} appears twice in one object")], limits)
    except RecursionError:
        _fail([_too_deep(limits)], limits)
    except json.JSONDecodeError as exc:
        where = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        _fail([Problem("", "invalid_json", f"the body is not valid JSON: {where}")], limits)
    except _NotJson as exc:
        _fail(
            [Problem("", "invalid_json", f"the body is not valid JSON: {exc.name} is not a JSON value")],
            limits,
        )
    except ValueError:  # Python refuses integers of more than 4,300 digits
        _fail([Problem("", "invalid_json", "the body holds a number too long to read")], limits)
    if _depth(parsed) > limits.max_json_depth:
        _fail([_too_deep(limits)], limits)
    if not isinstance(parsed, dict):
        _fail([Problem("", "not_an_object", "the body must be a JSON object")], limits)
    audience = parsed.get("audience")
    if isinstance(audience, dict):
        count = sum(len(v) for k in _AUDIENCE_LISTS if isinstance(v := audience.get(k), list))
        if count > limits.max_recipients_per_request:
            _fail(
                [
                    Problem(
                        "audience",
                        "too_many_recipients",
                        f"the audience lists {count:,} ids; at most {limits.max_recipients_per_request:,} "
                        "per request: split the broadcast or address whole tenants",
                        {"count": count, "limit": limits.max_recipients_per_request},
                    )
                ],
                limits,
            )
    return text


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


class _NotJson(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _no_constants(name: str) -> NoReturn:
    raise _NotJson(name)


def _too_deep(limits: BroadcastLimits) -> Problem:
    return Problem(
        "", "too_deeply_nested", f"the body nests arrays/objects more than {limits.max_json_depth} deep"
    )


def _depth(value: Any) -> int:
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in node if isinstance(v, dict | list))
    return deepest


_TYPE_MESSAGES = {
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
    "list_type": "must be a JSON array",
    "tuple_type": "must be a JSON array",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "int_type": "must be a number",
    "float_type": "must be a number",
    "datetime_type": "must be a date-time string",
}


def _pydantic_problems(exc: ValidationError) -> list[Problem]:
    problems: list[Problem] = []
    for error in exc.errors(include_url=False):
        path = _loc_path(error["loc"])
        kind = error["type"]
        ctx = error.get("ctx") or {}
        if "problems" in ctx:  # several card problems raised as one pydantic error
            problems.extend(Problem(concat_path(path, sub), code, msg) for sub, code, msg in ctx["problems"])
        elif kind == "missing":
            problems.append(Problem(path, "missing_field", "is required"))
        elif kind == "extra_forbidden":
            problems.append(Problem(path, "unknown_field", _unknown_field_message(error["loc"])))
        elif kind == "json_invalid":
            problems.append(
                Problem(path, "invalid_json", f"the body is not valid JSON: {ctx.get('error', '')}")
            )
        elif kind in _TYPE_MESSAGES:
            message = "must not be null" if error.get("input") is None else _TYPE_MESSAGES[kind]
            problems.append(Problem(path, "invalid_field", message))
        elif kind in {"enum", "literal_error"}:
            problems.append(
                Problem(path, "invalid_field", f"must be {ctx.get('expected', 'one of the listed')}")
            )
        elif kind in _OWN_CODES:  # our PydanticCustomErrors: the message is ours and never echoes long input
            problems.append(Problem(path, kind, error["msg"]))
        else:
            problems.append(Problem(path, "invalid_field", error["msg"]))
    return problems


_OWN_CODES = frozenset(
    {
        "invalid_guid",
        "invalid_id",
        "nested_data",
        "invalid_field",
        "invalid_data_key",
        "groups_not_supported",
        "invalid_notification_id",
        "invalid_category",
        "invalid_send_at",
        "invalid_placeholder",
        "message_empty",
        "invalid_card",
        "unsupported_card_version",
        "unsupported_template_expression",
    }
)


def _loc_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path = join_path(path, part)
    return path


def _unknown_field_message(loc: tuple[int | str, ...]) -> str:
    name = str(loc[-1]) if loc else ""
    camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)
    hint = f"; field names are camelCase: did you mean {show(camel)}?" if camel != name else ""
    return f"is not a known field{hint}"


def _rules(request: BroadcastRequest, now: datetime, limits: BroadcastLimits) -> list[Problem]:
    audience = request.audience
    problems: list[Problem] = []
    if audience.include_uninstalled and not audience.tenants:
        problems.append(
            Problem(
                "audience.includeUninstalled", "invalid_field", "only applies together with audience.tenants"
            )
        )
    if not (audience.users or audience.channels or audience.groups or audience.tenants):
        problems.append(
            Problem(
                "audience", "empty_audience", "the audience is empty: give users, channels, groups or tenants"
            )
        )
    if request.send_at is not None and request.send_at - now > limits.max_schedule_ahead:
        problems.append(
            Problem(
                "sendAt",
                "send_at_too_far",
                f"may be at most {limits.max_schedule_ahead.days} days ahead",
                {"latest": (now + limits.max_schedule_ahead).astimezone(UTC).isoformat()},
            )
        )
    problems.extend(_user_data_sizes(audience.users, limits))
    problems.extend(_placeholder_problems(request))
    if not problems:
        problems.extend(_message_size(request, limits))
    problems.extend(_conflicting_duplicates(audience))
    return problems


def _user_data_sizes(users: Iterable[UserTarget], limits: BroadcastLimits) -> Iterable[Problem]:
    for index, user in enumerate(users):
        if not user.data:
            continue
        size = len(json.dumps(user.data, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        if size > limits.max_user_data_bytes:
            yield Problem(
                f"audience.users[{index}].data",
                "user_data_too_large",
                f"is {size:,} bytes as JSON; the limit is {limits.max_user_data_bytes:,}",
                {"size": size, "limit": limits.max_user_data_bytes},
            )


def _placeholder_problems(request: BroadcastRequest) -> list[Problem]:
    names = placeholders(request.message)
    if not names:
        return []
    audience = request.audience
    listed = ", ".join(sorted(names)[:10])
    if audience.channels or audience.groups or audience.tenants:
        return [
            Problem(
                "message",
                "placeholders_need_user_data",
                f"the message uses placeholders ({listed}), which only audience.users[].data can fill; "
                "channels, groups and tenants have no per-recipient data",
            )
        ]
    problems: list[Problem] = []
    for index, user in enumerate(audience.users):
        for name in sorted(names - user.data.keys()):
            problems.append(
                Problem(
                    f"audience.users[{index}].data.{name}",
                    "missing_placeholder_value",
                    f"the message uses the placeholder {name!r}; this user has no value for it",
                )
            )
    return problems


def _message_size(request: BroadcastRequest, limits: BroadcastLimits) -> list[Problem]:
    sizer = ActivitySizer(request.message)
    limit = limits.max_message_bytes

    def too_large(field: str, size: int, whose: str) -> Problem:
        return Problem(
            field,
            "message_too_large",
            f"{whose} is {size:,} bytes as Teams counts it (UTF-16 JSON of the activity); the limit is {limit:,}",
            {"size": size, "limit": limit},
        )

    if sizer.base_size > limit or not placeholders(request.message):
        return [] if sizer.base_size <= limit else [too_large("message", sizer.base_size, "the message")]
    return [
        too_large(f"audience.users[{index}].data", size, "the message for this user")
        for index, user in enumerate(request.audience.users)
        if (size := sizer.size(user.data)) > limit
    ]


def _canonical(data: Mapping[str, JsonScalar]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _conflicting_duplicates(audience: Audience) -> list[Problem]:
    problems: list[Problem] = []
    users: dict[tuple[str, str], int] = {}
    for index, user in enumerate(audience.users):
        first = users.setdefault((user.tenant_id, user.aad_object_id), index)
        if first != index and _canonical(audience.users[first].data) != _canonical(user.data):
            problems.append(
                Problem(
                    f"audience.users[{index}]",
                    "conflicting_duplicate",
                    f"the same user as audience.users[{first}] with different data: which should be sent?",
                )
            )
    channels: dict[tuple[str, str], int] = {}
    for index, channel in enumerate(audience.channels):
        first = channels.setdefault((channel.tenant_id, channel.channel_id), index)
        if first != index and audience.channels[first].team_id != channel.team_id:
            problems.append(
                Problem(
                    f"audience.channels[{index}]",
                    "conflicting_duplicate",
                    f"the same channel as audience.channels[{first}] under a different teamId",
                )
            )
    return problems


def _normalised(request: BroadcastRequest, now: datetime) -> BroadcastRequest:
    audience = request.audience
    users: dict[tuple[str, str], UserTarget] = {}
    for target in audience.users:
        users.setdefault((target.tenant_id, target.aad_object_id), target)  # the first one wins
    channels: dict[tuple[str, str], ChannelTarget] = {}
    for channel in audience.channels:
        channels.setdefault((channel.tenant_id, channel.channel_id), channel)
    groups: dict[tuple[str, str], GroupTarget] = {}
    for group in audience.groups:
        groups.setdefault((group.tenant_id, group.group_id), group)
    deduplicated = audience.model_copy(
        update={
            "users": tuple(users.values()),
            "channels": tuple(channels.values()),
            "groups": tuple(groups.values()),
            "tenants": tuple(dict.fromkeys(audience.tenants)),
        }
    )
    send_at = request.send_at
    send_at = None if send_at is None or send_at <= now else send_at.astimezone(UTC)
    return request.model_copy(update={"audience": deduplicated, "send_at": send_at})


def _fail(problems: list[Problem], limits: BroadcastLimits) -> NoReturn:
    codes = {p.code for p in problems}
    status = 413 if codes <= _SIZE_CODES else 400
    code = next(iter(codes)) if len(codes) == 1 else "invalid_request"
    details = [p.to_detail() for p in problems[: limits.max_error_details]]
    if len(problems) > limits.max_error_details:
        more = len(problems) - limits.max_error_details
        details.append(
            {"field": "", "code": "more_problems", "message": f"{more:,} more problems not listed"}
        )
    first = problems[0]
    where = f"{first.field}: " if first.field else ""
    if len(problems) == 1:
        message = f"{where}{first.message}"
    else:
        message = f"the request has {len(problems):,} problems (see details); first: {where}{first.message}"
    raise InvalidInput(
        message,
        code=code,
        field=(first.field or None) if len(problems) == 1 else None,
        details=details,
        status=status,
    )


__all__ = [
    "Audience",
    "BroadcastLimits",
    "BroadcastRequest",
    "ChannelTarget",
    "GroupTarget",
    "MessageContent",
    "Urgency",
    "UserTarget",
    "parse_broadcast_request",
]
