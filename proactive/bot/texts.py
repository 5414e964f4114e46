"""What the bot says: welcome, help and command confirmations, in one place so wording is reviewed once.

The welcome follows Microsoft's guidance for proactive welcome messages: say why the user is receiving it,
what the app offers, and the next step (here: how to opt out, and ``help``). Texts use the Markdown subset
Teams renders in bot messages.
"""

from __future__ import annotations

from proactive.models import Preferences, QuietHours

DEFAULT_BOT_NAME = "Notifications"

COMMANDS = (
    "- **stop** or **unsubscribe**: no more notifications (**stop deployments**: only that category)\n"
    "- **start** or **subscribe**: notifications again (**start deployments**: that category again)\n"
    "- **quiet 22:00-07:00**: hold non-urgent notifications during those hours (**quiet off** to end)\n"
    "- **status**: what you have set\n"
    "- **help**: this list"
)

QUIET_FORMAT = "I couldn't read those hours. Try **quiet 22:00-07:00** (24-hour clock), or **quiet off**."
QUIET_EMPTY = "Quiet hours need different start and end times, for example **quiet 22:00-07:00**."
CATEGORY_FORMAT = (
    "A category is one word of letters, digits, '-' or '_', for example **unsubscribe deployments**."
)


def welcome(bot_name: str | None) -> str:
    """The first message after a personal install."""
    name = bot_name or DEFAULT_BOT_NAME
    return (
        f"Hi, I'm **{name}**. You're getting this message because {name} was just added to your Teams "
        "(by you, or by your organization for you).\n\n"
        "I send notifications your organization chose to share with you, such as incidents and "
        "deployment notices, right here in this chat.\n\n"
        "You're in control: reply **stop** at any time to stop receiving them, **unsubscribe <category>** "
        "to stop only one kind, or **quiet 22:00-07:00** to hold non-urgent ones overnight. "
        "Reply **help** for everything I understand."
    )


def help_text() -> str:
    return "Here's what I understand in this chat:\n\n" + COMMANDS


def not_understood() -> str:
    return "Sorry, I didn't understand that. " + help_text()


def group_context() -> str:
    """Answer to a command in a channel or group chat: preferences are personal."""
    return (
        "Notification settings are personal, so I only take commands in our 1:1 chat. "
        "Open a chat with me and send **help** there."
    )


def stopped_all() -> str:
    return "Done: you won't receive notifications from me anymore. Send **start** to turn them back on."


def stopped_category(category: str) -> str:
    return f"Done: no more **{category}** notifications. Send **start {category}** to get them again."


def started_all() -> str:
    return "Done: you'll receive all notifications again. Send **stop** to turn them off."


def started_category(category: str, *, still_stopped: bool) -> str:
    if still_stopped:
        return (
            f"**{category}** is no longer excluded, but all notifications are still off. "
            "Send **start** to turn everything back on."
        )
    return f"Done: you'll receive **{category}** notifications again."


def _zone(time_zone: str | None) -> str:
    return f" ({time_zone})" if time_zone else " (UTC until Teams tells me your time zone)"


def quiet_set(hours: QuietHours, time_zone: str | None) -> str:
    return (
        f"Done: non-urgent notifications will wait between {hours.start} and {hours.end}{_zone(time_zone)}. "
        "Urgent ones still come through. Send **quiet off** to end this."
    )


def quiet_off() -> str:
    return "Done: no more quiet hours."


def status(preferences: Preferences | None, time_zone: str | None) -> str:
    """A summary of the user's settings."""
    if preferences is None:
        return "You receive all notifications and have no quiet hours. Send **help** to change that."
    lines = [
        "Notifications: **off**" if preferences.opted_out_all else "Notifications: **on**",
    ]
    if preferences.opted_out_categories:
        lines.append("Unsubscribed from: " + ", ".join(f"**{c}**" for c in preferences.opted_out_categories))
    if preferences.quiet_hours is not None:
        hours = preferences.quiet_hours
        lines.append(f"Quiet hours: {hours.start}-{hours.end}{_zone(time_zone)}")
    else:
        lines.append("Quiet hours: none")
    return "\n\n".join(lines)
