"""The outbound host allow-list (``proactive.outbound``): which URLs may receive the bot's token."""

from __future__ import annotations

import logging

import pytest

from proactive.errors import OutboundHostRefused
from proactive.outbound import BOT_CONNECTOR_HOSTS, GRAPH_HOSTS, OutboundPolicy
from proactive.settings import Settings

DEV_HOSTS = ("127.0.0.1", "localhost:3978", "emulator.test")
POLICY = OutboundPolicy(DEV_HOSTS)

ALLOWED = [
    "https://smba.trafficmanager.net/teams/",
    "https://smba.trafficmanager.net/amer/",
    "https://smba.trafficmanager.net",
    "https://smba.trafficmanager.net:443/teams",  # explicit default port
    "https://SMBA.TrafficManager.NET/teams/",  # host names are case-insensitive
    "HTTPS://smba.trafficmanager.net/teams/",  # so is the scheme
    "https://smba.trafficmanager.net./teams/",  # trailing dot: the same DNS name
    "https://europe.webchat.botframework.com/",
    "https://token.botframework.com/",
    "https://smba.infra.gcc.teams.microsoft.com/teams",  # GCC fallback
    "https://smba.infra.gov.teams.microsoft.us/teams",  # GCC High fallback
    "https://smba.infra.dod.teams.microsoft.us/teams",  # DoD fallback
    "https://graph.microsoft.com/v1.0",
    "http://127.0.0.1:51234/",  # dev host without port: any port, http allowed
    "https://127.0.0.1/",
    "http://localhost:3978/api",  # dev host:port
    "http://emulator.test/",
]

REFUSED = [
    # look-alike hosts
    "https://smba.trafficmanager.net.evil.com/teams/",
    "https://evilsmba.trafficmanager.net/",
    "https://evil.trafficmanager.net/",  # anyone can register a Traffic Manager name
    "https://evilbotframework.com/",
    "https://botframework.com.evil.com/",
    "https://botframework.com/",  # only subdomains are on the list
    "https://teams.microsoft.com.evil.com/",
    "https://graph.microsoft.com.evil.com/",
    "https://login.microsoftonline.com/",  # Microsoft, but not a Bot Connector or Graph host
    # user info
    "https://smba.trafficmanager.net@evil.com/teams/",
    "https://user:pass@smba.trafficmanager.net/teams/",
    "https://evil.com\\@smba.trafficmanager.net/",
    "https://smba.trafficmanager.net\\@evil.com/",
    # scheme and port
    "http://smba.trafficmanager.net/teams/",  # http only for dev hosts
    "https://smba.trafficmanager.net:8443/teams/",
    "https://smba.trafficmanager.net:99999/",
    "https://smba.trafficmanager.net:abc/",
    "https://smba.trafficmanager.net:443:80/",
    "ftp://smba.trafficmanager.net/",
    "wss://smba.trafficmanager.net/",
    "javascript:alert(1)",
    "//smba.trafficmanager.net/teams/",
    "smba.trafficmanager.net/teams/",
    "/v3/conversations",
    "",
    # IDNA and encodings
    "https://smba.trafficmanager.n\u0435t/",  # Cyrillic e
    "https://\uff53mba.trafficmanager.net/",  # fullwidth s (NFKC folds it to ASCII)
    "https://smba\uff0etrafficmanager.net/",  # fullwidth dot
    "https://xn--smba-trafficmanager-net.evil.com/",
    "https://smba.trafficmanager.net%2eevil.com/",
    "https://smba%2etrafficmanager.net/",
    "https://smba.trafficmanager.net..//",
    # whitespace and control characters
    " https://smba.trafficmanager.net/teams/",
    "https://smba.trafficmanager.net /teams/",
    "https://smba.traffic\tmanager.net/",
    "https://smba.trafficmanager.net/te\nams/",
    # dev hosts: only what is listed
    "http://localhost:3979/",  # listed with another port
    "http://127.0.0.2/",
    "http://[::1]:3978/",
    "http://emulator.test.evil.com/",
]


@pytest.mark.parametrize("url", ALLOWED)
def test_allowed_urls_pass_the_check(url: str) -> None:
    assert POLICY.allows(url)
    assert POLICY.check(url).host == POLICY.check(url).host.lower()


@pytest.mark.parametrize("url", REFUSED)
def test_refused_urls_raise_outbound_host_refused(url: str) -> None:
    assert not POLICY.allows(url)
    with pytest.raises(OutboundHostRefused):
        POLICY.check(url)


def test_without_dev_hosts_an_emulator_url_is_refused() -> None:
    assert not OutboundPolicy().allows("http://127.0.0.1:51234/")


def test_the_checked_url_is_rebuilt_from_its_checked_parts() -> None:
    assert POLICY.check("https://SMBA.trafficmanager.net.:443/teams/?x=1#frag").base == (
        "https://smba.trafficmanager.net/teams"
    )
    assert POLICY.check("http://127.0.0.1:5000").base == "http://127.0.0.1:5000"
    assert POLICY.check("http://127.0.0.1:5000/").base == "http://127.0.0.1:5000"
    assert POLICY.check("https://smba.trafficmanager.net/a%2Fb//").base == (
        "https://smba.trafficmanager.net/a%2Fb"
    )


def test_bot_connector_policy_refuses_graph_and_graph_policy_refuses_the_connector() -> None:
    settings = Settings.from_env(
        {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "BOT_AUTH": "anonymous"}
    )
    connector = OutboundPolicy.for_bot_connector(settings)
    graph = OutboundPolicy.for_graph(settings)

    assert connector.allows("https://smba.trafficmanager.net/teams/")
    assert not connector.allows("https://graph.microsoft.com/v1.0")
    assert graph.allows("https://graph.microsoft.com/v1.0")
    assert not graph.allows("https://smba.trafficmanager.net/teams/")
    assert OutboundPolicy(microsoft_hosts=BOT_CONNECTOR_HOSTS + GRAPH_HOSTS).allows(
        "https://graph.microsoft.com/v1.0"
    )


def test_dev_hosts_come_from_settings() -> None:
    settings = Settings.from_env(
        {
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
            "BOT_AUTH": "anonymous",
            "DEV_OUTBOUND_HOSTS": "127.0.0.1:7000",
        }
    )
    policy = OutboundPolicy.for_bot_connector(settings)

    assert policy.allows("http://127.0.0.1:7000/")
    assert not policy.allows("http://127.0.0.1:7001/")


def test_a_refusal_is_logged_with_the_host_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="proactive.outbound")

    with pytest.raises(OutboundHostRefused) as refused:
        POLICY.check("https://user:hunter2@evil.com/v3/conversations/a:secret-conversation/activities")

    assert refused.value.host == "evil.com"
    assert "evil.com" in caplog.text
    assert "hunter2" not in caplog.text and "secret-conversation" not in caplog.text
