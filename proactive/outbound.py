"""The outbound host allow-list: which URLs may receive the bot's token.

A stored conversation reference carries the ``serviceUrl`` the bot must call; that URL came from an
activity and ends up holding our bearer token. So before any token leaves the process the URL is checked
here, and the caller then talks to the URL *this module rebuilt* (:attr:`AllowedUrl.base`), never to the
raw string, so no difference between two URL parsers can send the token elsewhere.

Allowed (``reference/teams-platform-facts.md`` section 2, ``ARCHITECTURE.md`` security rules):

- Bot Connector: ``https://`` on the default port to ``*.botframework.com``, ``smba.trafficmanager.net``
  (exactly: anyone can create another ``*.trafficmanager.net`` name), ``*.teams.microsoft.com`` (GCC)
  and ``*.teams.microsoft.us`` (GCC High, DoD);
- Graph: ``https://graph.microsoft.com``;
- development hosts from ``Settings.dev_outbound_hosts`` (``host`` = any port, ``host:port`` = that
  port), over ``http`` or ``https``. Only these may use ``http``.

Refused, whatever the host looks like: user info (``https://smba.trafficmanager.net@evil.com``), hosts
that are not plain ASCII labels (IDNA look-alikes, ``%`` escapes, backslashes, IPv6 literals), spaces or
control characters anywhere, invalid ports, other schemes. Host names are compared lowercased with one
trailing dot removed (``smba.trafficmanager.net.`` is the same DNS name).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from proactive.errors import OutboundHostRefused
from proactive.settings import Settings

__all__ = [
    "BOT_CONNECTOR_HOSTS",
    "GRAPH_HOSTS",
    "AllowedUrl",
    "HostRule",
    "OutboundPolicy",
]

logger = logging.getLogger(__name__)

_LABELS = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
# Anything below U+0021 (space and controls), DEL, or a backslash: browsers and Python disagree on these.
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class HostRule:
    """One allowed Microsoft host: exactly ``name``, or (``subdomains``) any name ending in ``.name``."""

    name: str
    subdomains: bool = False

    def matches(self, host: str) -> bool:
        if self.subdomains:
            return host.endswith("." + self.name)
        return host == self.name

    @classmethod
    def parse(cls, pattern: str) -> HostRule:
        """``*.name`` (any subdomain of ``name``) or ``name`` (exactly), as in ``Settings.cloud``."""
        if pattern.startswith("*."):
            return cls(pattern[2:], subdomains=True)
        return cls(pattern)


BOT_CONNECTOR_HOSTS: tuple[HostRule, ...] = (
    HostRule("botframework.com", subdomains=True),
    HostRule("smba.trafficmanager.net"),
    HostRule("teams.microsoft.com", subdomains=True),
    HostRule("teams.microsoft.us", subdomains=True),
)
"""Where the Bot Connector lives in every cloud together; a deployment allows only its own cloud's hosts
(``Settings.cloud.connector_hosts``, see :meth:`OutboundPolicy.for_bot_connector`)."""

GRAPH_HOSTS: tuple[HostRule, ...] = (HostRule("graph.microsoft.com"),)
"""Microsoft Graph (public cloud)."""


@dataclass(frozen=True)
class AllowedUrl:
    """A URL that passed the check, rebuilt from its checked parts.

    Attributes:
        scheme: ``https`` (or ``http`` for a development host).
        host: the lowercased host name, without a trailing dot.
        port: the explicit port, or ``None`` for the scheme's default.
        path: the URL's path as given (still percent-encoded), without trailing slashes.
    """

    scheme: str
    host: str
    port: int | None
    path: str

    @property
    def base(self) -> str:
        """``scheme://host[:port]/path`` with no trailing slash, query or fragment: join with ``/v3/...``."""
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}://{self.host}{port}{self.path}"


@dataclass(frozen=True)
class _DevHost:
    host: str
    port: int | None

    @classmethod
    def parse(cls, entry: str) -> _DevHost:
        host, sep, port = entry.strip().lower().rpartition(":")
        if not sep:
            return cls(port.rstrip("."), None)
        return cls(host.rstrip("."), int(port))


class OutboundPolicy:
    """Decides whether a URL may receive the bot's token. Pure: no I/O, no clock.

    Args:
        dev_hosts: development hosts (``host`` or ``host:port``) allowed over http or https, on top of
            the Microsoft hosts; from ``Settings.dev_outbound_hosts``.
        microsoft_hosts: the Microsoft host rules; :data:`BOT_CONNECTOR_HOSTS` plus :data:`GRAPH_HOSTS`
            unless a narrower list is given (see :meth:`for_bot_connector`, :meth:`for_graph`).
    """

    def __init__(
        self,
        dev_hosts: Iterable[str] = (),
        *,
        microsoft_hosts: Iterable[HostRule] = BOT_CONNECTOR_HOSTS + GRAPH_HOSTS,
    ) -> None:
        self._dev_hosts = tuple(_DevHost.parse(entry) for entry in dev_hosts if entry.strip())
        self._microsoft_hosts = tuple(microsoft_hosts)

    @classmethod
    def for_bot_connector(cls, settings: Settings) -> OutboundPolicy:
        """The policy for Bot Connector service URLs: the configured cloud's hosts and the development hosts."""
        rules = tuple(HostRule.parse(pattern) for pattern in settings.cloud.connector_hosts)
        return cls(settings.dev_outbound_hosts, microsoft_hosts=rules)

    @classmethod
    def for_graph(cls, settings: Settings) -> OutboundPolicy:
        """The policy for Microsoft Graph: the configured cloud's Graph host and the development hosts."""
        rules = tuple(HostRule.parse(pattern) for pattern in settings.cloud.graph_hosts)
        return cls(settings.dev_outbound_hosts, microsoft_hosts=rules)

    def allows(self, url: str) -> bool:
        """Whether ``url`` may receive the token (no logging; see :meth:`check`)."""
        return self._evaluate(url) is not None

    def check(self, url: str) -> AllowedUrl:
        """Return the checked, rebuilt URL, or refuse it.

        Raises:
            OutboundHostRefused: the URL is not allowed; it is logged with its host only.
        """
        allowed = self._evaluate(url)
        if allowed is None:
            host = _host_for_log(url)
            logger.warning("Refused to send the bot token to host %r (not on the outbound allow-list)", host)
            raise OutboundHostRefused(host)
        return allowed

    def _evaluate(self, url: str) -> AllowedUrl | None:
        if not isinstance(url, str) or _UNSAFE.search(url):
            return None
        try:
            parts = urlsplit(url)
            port = parts.port  # raises ValueError for a non-numeric or out-of-range port
        except ValueError:
            return None
        scheme = parts.scheme.lower()
        host = _plain_host(parts)
        if scheme not in _DEFAULT_PORTS or host is None:
            return None
        effective_port = port if port is not None else _DEFAULT_PORTS[scheme]
        for dev in self._dev_hosts:
            if dev.host == host and dev.port in (None, effective_port):
                return AllowedUrl(scheme, host, port, parts.path.rstrip("/"))
        if scheme != "https" or effective_port != 443:
            return None
        if any(rule.matches(host) for rule in self._microsoft_hosts):
            return AllowedUrl(scheme, host, None, parts.path.rstrip("/"))
        return None


def _plain_host(parts: SplitResult) -> str | None:
    """The host name, lowercased without a trailing dot, if it is plain ASCII labels and has no user info."""
    if "@" in parts.netloc:
        return None
    host = parts.hostname  # lowercased by urlsplit; brackets of IPv6 literals removed
    if not host:
        return None
    if host.endswith("."):
        host = host[:-1]
    return host if _LABELS.fullmatch(host) else None


def _host_for_log(url: object) -> str:
    # Only the host goes to the log: paths carry conversation ids, user info may carry credentials.
    try:
        host = urlsplit(str(url)).hostname or ""
    except ValueError:
        host = ""
    return host.encode("ascii", "backslashreplace").decode()[:255] or "<no host>"
