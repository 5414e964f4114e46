"""The bot: inbound Teams activities captured as conversation references, consent commands, welcome.

``BotEndpoint`` (HTTP-free) answers ``POST /api/messages``; ``ActivityHandler`` does the work for one
parsed activity; ``plan_capture`` and ``parse_command`` are the pure rules underneath.
May import: models, errors, json_input, storage and delivery ports, the broadcast request; no adapters, no azure.
"""

from proactive.bot.activity import InboundActivity, parse_activity
from proactive.bot.capture import ReferenceCapture, plan_capture
from proactive.bot.commands import apply_command, parse_command
from proactive.bot.endpoint import BotEndpoint, EndpointAnswer
from proactive.bot.handler import ActivityHandler, HandlerOutcome
from proactive.bot.ports import Authenticator, ReplySender, WelcomeQueue
from proactive.bot.welcome import Welcomes, welcome_notification_id

__all__ = [
    "ActivityHandler",
    "Authenticator",
    "BotEndpoint",
    "EndpointAnswer",
    "HandlerOutcome",
    "InboundActivity",
    "ReferenceCapture",
    "ReplySender",
    "WelcomeQueue",
    "Welcomes",
    "apply_command",
    "parse_activity",
    "parse_command",
    "plan_capture",
    "welcome_notification_id",
]
