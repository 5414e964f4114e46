"""One activity, handled: tenant check, capture, consent commands, welcome; store first, reply after.

Order matters and is the contract of this module:

1. an activity of a tenant outside the allow-list is ignored (logged, counted), nothing is read or stored;
2. an activity whose ``serviceUrl`` fails the outbound policy is ignored too: a reference the product may
   never use is worthless, and in anonymous mode (no JWT proved the URL) it keeps anyone from planting
   references that point elsewhere (decision for issue 5);
3. references are captured (:mod:`proactive.bot.capture`), then preferences are written (commands), then
   a welcome is stored (:mod:`proactive.bot.welcome`);
4. only then replies go out (command confirmations). A reply that fails is logged with its error class,
   status and code (never the token nor the text) and counted; the capture stands.

The welcome is not a reply: it is a send like a broadcast's, stored as a ledger row of the tenant's welcome
notification and sent by the tenant's paced run (:class:`~proactive.bot.welcome.Welcomes`), so a mass
install neither loses welcomes to 429s nor spends the tenant's budget behind a broadcast's back. It is
queued at most once per install of the app for a user (in this bot, in this tenant): only the activity whose
conditional reference write turned the user's reference active welcomes (see
:class:`~proactive.bot.capture.ReferenceCapture`). Teams delivers a personal install as two activities at
the same instant; whichever lands second finds the reference active and stays quiet. A re-install after an
uninstall (or after a send found the reference stale) turns it active again and is welcomed again.
Command confirmations answer a user's own message one at a time and stay direct replies.

Storage failures propagate (the endpoint answers 503, Teams redelivers; every step is idempotent).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from proactive.bot import texts
from proactive.bot.activity import ActivityType, ConversationType, InboundActivity
from proactive.bot.capture import CaptureResult, ReferenceCapture, plan_capture
from proactive.bot.commands import apply_command, parse_command
from proactive.bot.ports import ReplyBuilder, ReplySender, WelcomeQueue
from proactive.errors import DeliveryError, InvalidInput, OutboundHostRefused
from proactive.models import RecipientKind, recipient_key
from proactive.storage.ports import PreferenceStore, ReferenceStore

__all__ = ["ActivityHandler", "HandlerOutcome", "ReplySender"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HandlerOutcome:
    """What handling did, for the endpoint's log line and for tests.

    Attributes:
        handled: ``False`` when the activity was ignored (``reason`` says why).
        reason: ``tenant_not_allowed``, ``service_url_not_allowed`` or ``unhandled_type`` when ignored.
        capture: What the capture did.
        replies: How many replies were sent successfully.
        welcomed: A welcome was stored and queued for the paced path.
    """

    handled: bool
    reason: str | None = None
    capture: CaptureResult = field(default_factory=CaptureResult)
    replies: int = 0
    welcomed: bool = False


class ActivityHandler:
    """Handles parsed activities.

    Args:
        references: The reference store (with the atomic update the welcome decision relies on).
        preferences: The preference store the broadcast pipeline reads.
        replies: Sends command confirmations.
        welcomes: Stores and queues welcomes (:class:`~proactive.bot.welcome.Welcomes`).
        tenant_allowed: The tenant allow-list (``Settings.tenant_allowed``).
        service_url_allowed: The outbound policy (``OutboundPolicy.allows``).
        clock: The current time, aware UTC.
        reply_builder: Builds a reply's wire JSON from the inbound activity and a text
            (``proactive.adapters.agents_activity.build_reply``, the Agents SDK's schema).
    """

    def __init__(
        self,
        references: ReferenceStore,
        preferences: PreferenceStore,
        replies: ReplySender,
        *,
        welcomes: WelcomeQueue,
        tenant_allowed: Callable[[str], bool],
        service_url_allowed: Callable[[str], bool],
        clock: Callable[[], datetime],
        reply_builder: ReplyBuilder,
    ) -> None:
        self._capture = ReferenceCapture(references, clock)
        self._preferences = preferences
        self._replies = replies
        self._welcomes = welcomes
        self._tenant_allowed = tenant_allowed
        self._service_url_allowed = service_url_allowed
        self._clock = clock
        self._build_reply = reply_builder
        self.counters: Counter[str] = Counter()

    async def handle(self, activity: InboundActivity) -> HandlerOutcome:
        """Capture, apply commands, reply.

        Raises:
            InvalidInput: the activity lacks a field its capture needs (nothing was stored).
            StorageError: the tables failed.
        """
        if not self._tenant_allowed(activity.tenant_id):
            self.counters["ignored_tenant"] += 1
            logger.warning(
                "Ignored a %s activity of tenant %s (not on the allow-list)",
                activity.type,
                activity.tenant_id,
            )
            return HandlerOutcome(False, "tenant_not_allowed")
        if not self._service_url_allowed(activity.service_url):
            self.counters["ignored_service_url"] += 1
            logger.warning(
                "Ignored a %s activity: its serviceUrl is not an allowed Bot Connector host", activity.type
            )
            return HandlerOutcome(False, "service_url_not_allowed")
        if activity.type not in set(ActivityType):
            self.counters["ignored_type"] += 1
            return HandlerOutcome(False, "unhandled_type")

        steps = plan_capture(activity)  # may raise InvalidInput: before anything is written
        capture = await self._capture.apply(activity, steps)
        self.counters["captured"] += len(capture.stored) + len(capture.unchanged)
        self.counters["deactivated"] += len(capture.deactivated)
        if activity.type != ActivityType.MESSAGE:
            welcomed = await self._welcome(activity, capture)
            return HandlerOutcome(True, None, capture, welcomed=welcomed)
        outgoing = await self._respond(activity)

        sent = 0
        for text in outgoing:
            sent += await self._reply(activity, text)
        return HandlerOutcome(True, None, capture, sent)

    async def _welcome(self, activity: InboundActivity, capture: CaptureResult) -> bool:
        """Stores and queues the welcome of a new personal install (storage errors propagate: 503)."""
        aad = activity.aad_object_id
        if activity.conversation_type != ConversationType.PERSONAL or aad is None:
            return False
        if not self._is_new_install(activity, capture):
            return False
        if not await self._welcomes.welcome(activity.tenant_id, aad, _name(activity.bot)):
            return False
        self.counters["welcomes_queued"] += 1
        return True

    async def _respond(self, activity: InboundActivity) -> list[str]:
        """Writes preferences for commands and returns the texts to send (after all writes)."""
        personal = activity.conversation_type == ConversationType.PERSONAL
        if not personal:
            # With RSC permissions a bot sees every channel message: only answer when addressed.
            if activity.mentions_bot() and activity.command_text():
                return [texts.group_context()]
            return []
        aad = activity.aad_object_id
        if aad is None:  # plan_capture already refused personal messages without it
            return []
        current = await self._preferences.get(activity.tenant_id, aad)
        command_text = activity.command_text()
        if not command_text and not activity.text.strip():
            # Attachments only, reactions, card submits: keep the time zone fresh, say nothing.
            await self._refresh_time_zone(activity, current)
            return []
        result = apply_command(
            parse_command(command_text),
            current,
            tenant_id=activity.tenant_id,
            aad_object_id=aad,
            time_zone=activity.time_zone,
            now=self._clock(),
        )
        if result.preferences is not None:
            await self._preferences.put(result.preferences)
            self.counters["preferences_written"] += 1
        else:
            await self._refresh_time_zone(activity, current)
        return [result.reply]

    async def _refresh_time_zone(self, activity: InboundActivity, current: Any) -> None:
        zone = activity.time_zone
        if current is not None and zone is not None and current.time_zone != zone:
            await self._preferences.put(
                current.model_copy(update={"time_zone": zone, "updated_at": self._clock()})
            )

    @staticmethod
    def _is_new_install(activity: InboundActivity, capture: CaptureResult) -> bool:
        installed = (activity.type == ActivityType.INSTALLATION_UPDATE and activity.action == "add") or (
            activity.type == ActivityType.CONVERSATION_UPDATE and activity.bot_added()
        )
        aad = activity.aad_object_id
        # Teams sends both events on a personal install, often at the same instant: newly_active holds the
        # key only for the one activity whose conditional write activated the reference, so one welcome.
        #
        # Order, chosen on purpose: "never twice" over "never lost" for the one step that cannot be
        # atomic. The activation is committed before the welcome row is written (two table writes in
        # different tables). Once the row is written the welcome is not lost: the paced run sends it,
        # 429s and 5xx are re-driven, a lost queue message is found by reconciliation. Only a failure
        # between the two writes (storage down, process killed) loses it: the endpoint answers 503, and
        # the redelivered or twin activity finds the reference active. The user then misses only a
        # courtesy message: the reference stands, broadcasts reach them, "help" lists the same commands.
        return (
            installed and aad is not None and recipient_key(RecipientKind.USER, aad) in capture.newly_active
        )

    async def _reply(self, activity: InboundActivity, text: str) -> int:
        try:
            reply = self._build_reply(activity.raw, text)
        except InvalidInput:
            self.counters["reply_failed"] += 1
            logger.warning("No reply to a %s activity: it does not fit the SDK's schema", activity.type)
            return 0
        try:
            await self._replies.send_activity(activity.service_url, activity.conversation_id, reply)
        except (DeliveryError, OutboundHostRefused) as exc:
            self.counters["reply_failed"] += 1
            status = getattr(exc, "status", None)
            code = getattr(exc, "code", None)
            logger.warning(
                "Reply to a %s activity failed: %s %s %s", activity.type, type(exc).__name__, status, code
            )
            return 0
        self.counters["replied"] += 1
        return 1


def _name(account: Mapping[str, Any]) -> str | None:
    value = account.get("name")
    return value if isinstance(value, str) and value.strip() else None
