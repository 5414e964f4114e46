"""``python -m devhost seed``: capture test users the way Teams would, so a broadcast has someone to reach.

Posts one personal ``installationUpdate`` per user to the bot's ``/api/messages`` with the Teams emulator as
``serviceUrl`` (defaults: the ports ``python -m devhost run`` uses), in the README's tenant unless told
otherwise. The bot stores each user's conversation reference and welcomes them (paced, like any send).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Final

import aiohttp

from devhost.demo.audience import AudienceOptions, Seeder, SeedError, plan_audience

# The tenant in the README's examples.
SEED_TENANT: Final = "72f988bf-86f1-41af-91ab-2d7cd011db47"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Options of ``seed``."""
    parser = argparse.ArgumentParser(prog="python -m devhost seed", description=__doc__)
    parser.add_argument("--users", type=int, default=5, help="users to capture (default 5)")
    parser.add_argument("--tenant", default=SEED_TENANT, help=f"their tenant (default {SEED_TENANT})")
    parser.add_argument("--channels", type=int, default=0, help="channels to capture too (default 0)")
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
        ),
        first_tenant=options.tenant,
    )
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        seeder = Seeder(session, options.host, options.teams_url)
        await seeder.post_all(seeder.installs([plan]))
    return seeder.posted


def main(argv: list[str]) -> int:
    """Entry point of ``python -m devhost seed``."""
    options = parse_args(argv)
    try:
        posted = asyncio.run(seed(options))
    except (SeedError, aiohttp.ClientError, OSError) as exc:
        print(f"seed: {exc} (is `make run` running? see --host and --teams-url)")
        return 1
    print(
        f"Captured {options.users} users (and {options.channels} channels) in tenant {options.tenant} "
        f'({posted} activities). Broadcast to them with audience {{"tenants": ["{options.tenant}"]}}; '
        f"see them at {options.teams_url.rstrip('/')}/_emulator/"
    )
    return 0
