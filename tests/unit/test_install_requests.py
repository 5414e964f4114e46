"""The sender's install requests coalesced into one ``installs`` message (proactive.install.requests)."""

from __future__ import annotations

import asyncio

from proactive.adapters.memory_queues import MemoryWorkQueue
from proactive.delivery.ports import MAX_INSTALL_USERS, InstallRequest
from proactive.install.requests import InstallRequests

TENANT = "7e7e7e7e-0000-4000-8000-000000000007"


def user(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def single(n: int, **extra: object) -> dict[str, object]:
    return InstallRequest(tenant_id=TENANT, aad_object_id=user(n), reason="no_reference", **extra).to_json()  # type: ignore[arg-type]


async def test_requests_put_together_share_one_message_and_every_put_returns_once_it_is_queued() -> None:
    queue = MemoryWorkQueue("installs")
    requests = InstallRequests(queue, window=0.01)

    await asyncio.gather(*(requests.put(single(n, notification_id="n1")) for n in range(3)))

    assert queue.bodies() == [
        InstallRequest(
            tenant_id=TENANT,
            aad_object_ids=(user(0), user(1), user(2)),
            reason="no_reference",
            notification_id="n1",
        ).to_json()
    ]


async def test_a_full_message_goes_at_once_and_other_broadcasts_and_teams_get_their_own() -> None:
    queue = MemoryWorkQueue("installs")
    requests = InstallRequests(queue, window=0.01)
    team = InstallRequest(tenant_id=TENANT, channel_id="19:c@thread.tacv2", reason="no_reference").to_json()

    await asyncio.gather(
        *(requests.put(single(n, notification_id="n1")) for n in range(MAX_INSTALL_USERS + 1)),
        requests.put(single(99, notification_id="n2")),
        requests.put(team),
    )

    bodies = queue.bodies()
    parsed = [InstallRequest.from_json(b) for b in bodies]
    assert sorted(len(p.users) for p in parsed) == [0, 1, 1, MAX_INSTALL_USERS]
    assert team in bodies
    every = [u for p in parsed if p.notification_id == "n1" for u in p.users]
    assert sorted(every) == sorted(user(n) for n in range(MAX_INSTALL_USERS + 1))  # nobody lost or twice


async def test_a_failed_put_fails_every_request_it_held() -> None:
    class Broken(MemoryWorkQueue):
        async def put(self, body: object, *, delay: float = 0.0) -> None:  # type: ignore[override]
            raise OSError("queue down")

    requests = InstallRequests(Broken("installs"), window=0.01)
    results = await asyncio.gather(*(requests.put(single(n)) for n in range(2)), return_exceptions=True)
    assert [type(r) for r in results] == [OSError, OSError]
