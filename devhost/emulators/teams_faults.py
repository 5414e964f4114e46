"""Fault kinds, their Teams error bodies, and the rules that script them (for :mod:`devhost.emulators.teams`).

Every status and body here comes from section 3 of ``shared/reference/teams-platform-facts.md``. A rule
matches requests by conversation, user and tenant (all given fields must match) and by operation, then
answers with the next kind from its script:

.. code-block:: json

    {"match": {"user": "<aadObjectId or 29:id>", "conversation": "a:...", "tenant": "..."},
     "operations": ["send"],           // create|send|update|delete|members|conversations; default all
     "kind": "503", "times": 2,        // the next 2 matching requests answer 503, then the rule is spent
     "sequence": ["503", "ok", "412"], // instead of kind/times: one kind per request, "ok" passes
     "delay": 0.5,                     // answer this many seconds late ("kind": "delay" then succeeds)
     "retry_after": 1.5,               // Retry-After for an injected "429"
     "seconds": 30}                    // how long "timeout" hangs before giving up (default 120)

A rule with ``kind`` and no ``times`` or ``sequence`` never runs out.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Operations as the rate-limit table and the fault rules name them.
OPERATIONS = frozenset({"create", "send", "update", "delete", "members", "conversations"})

# The kinds that do not answer with a Teams error body.
PASS = "ok"
DELAY = "delay"
RESET = "reset"
TIMEOUT = "timeout"

_MESSAGE_WRITES_BLOCKED_DETAIL = {
    "subCode": "MessageWritesBlocked",
    "details": "Thread is blocked from message writes.",
    "errorCode": None,
    "errorSubCode": None,
}


@dataclass(frozen=True)
class ErrorAnswer:
    """One Teams error answer: HTTP status, the code counted in stats, and the JSON body."""

    status: int
    code: str
    body: dict[str, Any]


def _error(status: int, code: str, message: str) -> ErrorAnswer:
    return ErrorAnswer(status, code, {"error": {"code": code, "message": message}})


# kind -> answer; numeric kinds and the Teams code names are accepted as aliases below.
ERRORS: dict[str, ErrorAnswer] = {
    "bad_argument": _error(400, "BadArgument", "Invalid activity payload."),
    "bot_not_registered": _error(401, "BotNotRegistered", "The bot is not registered."),
    # MessageWritesBlocked is the one answer whose message is itself a JSON document (facts sheet, section 2).
    "blocked": ErrorAnswer(
        403,
        "MessageWritesBlocked",
        {"errorCode": 209, "message": json.dumps(_MESSAGE_WRITES_BLOCKED_DETAIL, indent=2)},
    ),
    "admin_disabled": _error(403, "BotDisabledByAdmin", "The bot is disabled by the tenant admin."),
    "not_in_roster": _error(
        403, "BotNotInConversationRoster", "The bot is not part of the conversation roster."
    ),
    "conversation_blocked": _error(
        403, "ConversationBlockedByUser", "User blocked the conversation with the bot."
    ),
    "forbidden_operation": _error(
        403, "ForbiddenOperationException", "Bot is not installed in user's personal scope."
    ),
    "invalid_bot_api_host": _error(403, "InvalidBotApiHost", "Invalid bot API host for this tenant."),
    "not_enough_permissions": _error(403, "NotEnoughPermissions", "The bot lacks a required permission."),
    "conversation_not_found": _error(404, "ConversationNotFound", "Conversation not found."),
    "activity_not_found": _error(
        404, "ActivityNotFoundInConversation", "Activity not found in conversation."
    ),
    "412": _error(412, "PreconditionFailed", "Conflict: another operation on this conversation is running."),
    "message_too_big": _error(413, "MessageSizeTooBig", "Message size too big."),
    "429": _error(429, "Throttled", "Too many requests. Retry after the time in the Retry-After header."),
    "500": _error(500, "ServiceError", "An internal service error occurred."),
    "502": _error(502, "BadGateway", "A dependency of the service failed."),
    "503": _error(503, "ServiceUnavailable", "The service is temporarily unavailable."),
    "504": _error(504, "GatewayTimeout", "The service timed out."),
}

_ALIASES = {
    "400": "bad_argument",
    "401": "bot_not_registered",
    "404": "conversation_not_found",
    "413": "message_too_big",
    "throttled": "429",
    "slow": DELAY,
}
_ALIASES.update({answer.code.lower(): kind for kind, answer in ERRORS.items()})

KINDS = frozenset(ERRORS) | {PASS, DELAY, RESET, TIMEOUT}


def canonical_kind(kind: object) -> str:
    """Map a kind as a config writes it (``503``, ``"MessageWritesBlocked"``, ``"blocked"``) to its name.

    Raises:
        ValueError: for a kind the emulator does not know.
    """
    name = str(kind).strip()
    name = _ALIASES.get(name.lower(), name.lower() if name.lower() in KINDS else name)
    if name not in KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(KINDS)}")
    return name


@dataclass(frozen=True)
class RequestFacts:
    """What a rule can match on, resolved by the server before faults are consulted."""

    operation: str
    conversation_id: str | None
    tenant_id: str
    users: frozenset[str]


@dataclass(frozen=True)
class Fault:
    """The fault chosen for one request."""

    kind: str
    delay: float = 0.0
    retry_after: float = 1.0
    seconds: float = 120.0


@dataclass
class FaultRule:
    """A scripted fault: which requests it matches and what it answers, in order."""

    conversation: str | None = None
    user: str | None = None
    tenant: str | None = None
    operations: frozenset[str] = OPERATIONS
    script: list[str] = field(default_factory=list)
    forever: str | None = None
    delay: float = 0.0
    retry_after: float = 1.0
    seconds: float = 120.0
    used: int = 0

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> FaultRule:
        """Parse one rule as the module docstring shows it.

        Raises:
            ValueError: for unknown kinds or operations, or a rule without a kind or a sequence.
        """
        match = raw.get("match") or {}
        operations = frozenset(raw.get("operations") or OPERATIONS)
        if not operations <= OPERATIONS:
            raise ValueError(f"unknown operations {sorted(operations - OPERATIONS)}")
        rule = cls(
            conversation=match.get("conversation", raw.get("conversation")),
            user=match.get("user", raw.get("user")),
            tenant=match.get("tenant", raw.get("tenant")),
            operations=operations,
            delay=float(raw.get("delay", 0.0)),
            retry_after=float(raw.get("retry_after", 1.0)),
            seconds=float(raw.get("seconds", 120.0)),
        )
        if "sequence" in raw:
            rule.script = [canonical_kind(kind) for kind in raw["sequence"]]
        elif "kind" in raw:
            kind = canonical_kind(raw["kind"])
            if raw.get("times") is None:
                rule.forever = kind
            else:
                rule.script = [kind] * int(raw["times"])
        else:
            raise ValueError("a fault rule needs 'kind' or 'sequence'")
        return rule

    def matches(self, facts: RequestFacts) -> bool:
        """Whether this rule applies to the request and still has something to answer."""
        if self.forever is None and self.used >= len(self.script):
            return False
        return (
            facts.operation in self.operations
            and (self.conversation is None or self.conversation in _conversation_and_thread(facts))
            and (self.tenant is None or self.tenant == facts.tenant_id)
            and (self.user is None or self.user in facts.users)
        )

    def take(self) -> Fault:
        """Consume the next answer of the script."""
        kind = self.forever if self.forever is not None else self.script[self.used]
        self.used += 1
        return Fault(kind, delay=self.delay, retry_after=self.retry_after, seconds=self.seconds)

    def describe(self) -> dict[str, Any]:
        """A JSON view for ``/_emulator/stats``."""
        return {
            "match": {"conversation": self.conversation, "user": self.user, "tenant": self.tenant},
            "operations": sorted(self.operations),
            "kind": self.forever,
            "sequence": self.script,
            "used": self.used,
            "remaining": None if self.forever is not None else max(0, len(self.script) - self.used),
        }


@dataclass
class RandomFaults:
    """Faults drawn at fixed rates from a seeded generator, so a run can be replayed exactly.

    One uniform draw per request that the ``operations`` cover; the rates are cumulative slices of [0, 1)
    in the order given, so ``{"429": 0.1, "503": 0.05}`` answers 429 for draws below 0.1 and 503 for draws
    in [0.1, 0.15).
    """

    rates: dict[str, float] = field(default_factory=dict)
    seed: int | None = None
    operations: frozenset[str] = OPERATIONS
    retry_after: float = 1.0
    seconds: float = 120.0
    delay: float = 1.0
    _random: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rates = {canonical_kind(kind): float(rate) for kind, rate in self.rates.items()}
        if sum(self.rates.values()) > 1.0 + 1e-9:
            raise ValueError("fault rates add up to more than 1")
        self._random = random.Random(self.seed)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], seed: int | None = None) -> RandomFaults:
        """Parse ``{"rates": {...}, "seed": 7, "operations": [...], "retry_after": 1, "delay": 1}``."""
        return cls(
            rates=dict(raw.get("rates") or {}),
            seed=raw.get("seed", seed),
            operations=frozenset(raw.get("rate_operations") or raw.get("operations") or OPERATIONS),
            retry_after=float(raw.get("retry_after", 1.0)),
            seconds=float(raw.get("seconds", 120.0)),
            delay=float(raw.get("delay", 1.0)),
        )

    def draw(self, operation: str) -> Fault | None:
        """The fault for the next request, or ``None`` for a normal answer."""
        if not self.rates or operation not in self.operations:
            return None
        point = self._random.random()
        edge = 0.0
        for kind, rate in self.rates.items():
            edge += rate
            if point < edge:
                delay = self.delay if kind == DELAY else 0.0
                return Fault(kind, delay=delay, retry_after=self.retry_after, seconds=self.seconds)
        return None


def _conversation_and_thread(facts: RequestFacts) -> tuple[str | None, str | None]:
    # A rule on a channel also covers its reply threads ("<channel>;messageid=<id>").
    conversation = facts.conversation_id
    return conversation, conversation.split(";messageid=", 1)[0] if conversation else None


def parse_rules(raw: Iterable[Mapping[str, Any]]) -> list[FaultRule]:
    """Parse a list of rules (see the module docstring)."""
    return [FaultRule.from_dict(item) for item in raw]
