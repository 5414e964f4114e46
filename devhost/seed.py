"""``python -m devhost seed``: capture test users the way Teams would, so a broadcast has someone to reach.

Posts one personal ``installationUpdate`` per user to the bot's ``/api/messages`` with the Teams emulator as
``serviceUrl`` (defaults: the ports ``python -m devhost run`` uses), in the README's tenant unless told
otherwise. The bot stores each user's conversation reference and welcomes them (paced, like any send).

``--uninstalled N`` adds N users who never talked to the bot to the Graph emulator's directory instead (no
activity): a broadcast with ``"includeUninstalled": true`` finds them through Graph and installs the app for
them first (``TEAMS_APP_ID`` and the app's catalog entry are set by ``devhost run``).
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from typing import Any, Final

import aiohttp

from devhost.demo.audience import AudienceOptions, Seeder, SeedError, plan_audience
from devhost.stack import DEV_TEAMS_APP_ID, with_directory_users

# The tenant in the README's examples.
SEED_TENANT: Final = "72f988bf-86f1-41af-91ab-2d7cd011db47"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Options of ``seed``."""
    parser = argparse.ArgumentParser(prog="python -m devhost seed", description=__doc__)
    parser.add_argument("--users", type=int, default=5, help="users to capture (default 5)")
    parser.add_argument("--tenant", default=SEED_TENANT, help=f"their tenant (default {SEED_TENANT})")
    parser.add_argument("--channels", type=int, default=0, help="channels to capture too (default 0)")
    parser.add_argument(
        "--uninstalled",
        type=int,
        default=0,
        help="users who never talked to the bot, added to the Graph emulator's directory only (default 0)",
    )
    parser.add_argument(
        "--graph-url",
        default="http://127.0.0.1:7073",
        help="the Graph emulator (default http://127.0.0.1:7073)",
    )
    parser.add_argument(
        "--host", default="http://127.0.0.1:7071", help="the host (default http://127.0.0.1:7071)"
    )
    parser.add_argument(
        "--teams-url",
        default="http://127.0.0.1:7072",
        help="the Teams emulator (default http://127.0.0.1:7072)",
    )
    return parser.parse_args(argv)


async def seed(options: argparse.Namespace) -> int:
    """Capture the users; returns how many activities the bot accepted."""
    (plan,) = plan_audience(
        AudienceOptions(
            tenants=1,
            users=options.users,
            channels=options.channels,
            group_chats=0,
            blocked=0,
            opted_out=0,
            quiet=0,
            installs=1.0,  # they install the bot now: each gets the welcome
            never_talked=0,
        ),
        first_tenant=options.tenant,
    )
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        seeder = Seeder(session, options.host, options.teams_url)
        await seeder.post_all(seeder.installs([plan]))
        if options.uninstalled > 0:
            await add_uninstalled(session, options.graph_url, options.tenant, options.uninstalled)
    return seeder.posted


def uninstalled_users(tenant_id: str, count: int) -> list[dict[str, Any]]:
    """``count`` directory users (``UserConfig`` JSON) who never talked to the bot; stable ids, apart from the
    captured users' ids."""
    ids = (uuid.uuid5(uuid.NAMESPACE_URL, f"devhost-seed:{tenant_id}:never-talked:{n}") for n in range(count))
    return [{"id": str(value), "displayName": f"New colleague {n}"} for n, value in enumerate(ids)]


async def add_uninstalled(session: aiohttp.ClientSession, graph_url: str, tenant_id: str, count: int) -> None:
    """Add users to the running Graph emulator's directory (its full config, read and written back)."""
    base = graph_url.rstrip("/")
    async with session.get(f"{base}/_emulator/config") as answer:
        answer.raise_for_status()
        config = await answer.json()
    updated = with_directory_users(config, tenant_id, uninstalled_users(tenant_id, count), DEV_TEAMS_APP_ID)
    async with session.post(f"{base}/_emulator/config", json=updated) as answer:
        answer.raise_for_status()


def main(argv: list[str]) -> int:
    """Entry point of ``python -m devhost seed``."""
    options = parse_args(argv)
    try:
        posted = asyncio.run(seed(options))
    except (SeedError, aiohttp.ClientError, OSError) as exc:
        print(f"seed: {exc} (is `make run` running? see --host, --teams-url and --graph-url)")
        return 1
    print(
        f"Captured {options.users} users (and {options.channels} channels) in tenant {options.tenant} "
        f'({posted} activities). Broadcast to them with audience {{"tenants": ["{options.tenant}"]}}; '
        f"see them at {options.teams_url.rstrip('/')}/_emulator/"
    )
    if options.uninstalled > 0:
        print(
            f"Added {options.uninstalled} users who never talked to the bot to the Graph emulator's directory: "
            'add "includeUninstalled": true to the audience to install the app for them and reach them too.'
        )
    return 0
