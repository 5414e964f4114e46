"""Conversation references as a test stores them: the nesting of a botbuilder reference built once."""

from __future__ import annotations

from datetime import datetime

from proactive.models import (
    ChannelAccount,
    ConversationAccount,
    ConversationReference,
    RecipientKind,
    StoredReference,
)


def stored_reference(
    tenant_id: str,
    recipient_id: str,
    *,
    conversation_id: str,
    service_url: str,
    bot_id: str,
    updated_at: datetime,
    kind: RecipientKind = RecipientKind.USER,
    user_id: str | None = None,
    team_id: str | None = None,
    active: bool = True,
    stale_reason: str | None = None,
    conversation_in_tenant: bool = True,
) -> StoredReference:
    """A :class:`StoredReference` to ``recipient_id`` (a user's AAD object id, a channel or a chat id).

    Args:
        user_id: the user's channel account id (``29:...``); with it the reference names the user, whose
            ``aadObjectId`` is ``recipient_id``. Without it the reference has no ``user``.
        conversation_in_tenant: whether the conversation carries ``tenantId`` (botbuilder's references do;
            one made by hand elsewhere may not).
    """
    reference = ConversationReference(
        bot=ChannelAccount(id=bot_id),
        user=ChannelAccount(id=user_id, aad_object_id=recipient_id) if user_id is not None else None,
        conversation=ConversationAccount(
            id=conversation_id, tenant_id=tenant_id if conversation_in_tenant else None
        ),
        service_url=service_url,
    )
    return StoredReference(
        tenant_id=tenant_id,
        kind=kind,
        recipient_id=recipient_id,
        reference=reference,
        active=active,
        stale_reason=stale_reason,
        team_id=team_id,
        updated_at=updated_at,
    )
