"""A caller that behaves like a Logic App's HTTP action with the asynchronous pattern.

It sends the function key, and on ``202`` it polls the ``Location`` URL, waiting ``Retry-After`` seconds
between polls, until an answer other than ``202`` (Logic Apps: "Asynchronous pattern", on by default). Like
the action's default retry policy, a poll answered 408, 429 or 5xx, or lost to a connection error, is tried
again (4 times, exponential back-off, or the answer's ``Retry-After``). Polling is a generator of status
bodies, so a live view can show each one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import aiohttp

# The Logic Apps HTTP action's default retry policy: 4 retries of 408, 429 and 5xx answers.
RETRIES = 4
TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})


class BroadcastApiError(RuntimeError):
    """The API answered something the asynchronous pattern does not expect."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status


@dataclass(frozen=True)
class Accepted:
    """A ``202``: where to poll and how long to wait first."""

    body: dict[str, Any]
    location: str
    retry_after: float


def retry_after_seconds(value: str | None, default: float = 1.0) -> float:
    """``Retry-After`` as seconds (delta-seconds form; anything else falls back to ``default``)."""
    try:
        return max(0.0, float(value)) if value is not None else default
    except ValueError:
        return default


class LogicAppClient:
    """The broadcast API as a Logic App calls it.

    Args:
        session: the HTTP session.
        base_url: the host (``http://127.0.0.1:7071``).
        function_key: sent as ``x-functions-key``.
        sleep: awaited between polls (inject to observe the waits).
        max_poll_interval: cap on one wait (Logic Apps cap it too); the server's ``Retry-After`` otherwise.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        function_key: str,
        *,
        sleep: Callable[[float], Any] = asyncio.sleep,
        max_poll_interval: float = 5.0,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/") + "/"
        self._headers = {"x-functions-key": function_key}
        self._sleep = sleep
        self._max_poll = max_poll_interval
        self.polls = 0
        self.retries = 0
        self.waited: list[float] = []

    def url(self, path: str) -> str:
        return urljoin(self._base, path.lstrip("/"))

    async def _start(self, method: str, path: str, body: dict[str, Any] | None) -> Accepted:
        """The request that starts work, retried like a poll (every start is idempotent: the broadcast by
        its ``notificationId``, update and recall by their instance ids)."""
        for attempt in range(RETRIES + 1):
            try:
                async with self._session.request(
                    method, self.url(path), json=body, headers=self._headers
                ) as answer:
                    text = await answer.text()
                    if answer.status == 202 and "Location" in answer.headers:
                        return Accepted(
                            await answer.json(),
                            urljoin(str(answer.url), answer.headers["Location"]),
                            retry_after_seconds(answer.headers.get("Retry-After")),
                        )
                    if answer.status not in TRANSIENT or attempt == RETRIES:
                        raise BroadcastApiError(answer.status, text)
                    pause = retry_after_seconds(answer.headers.get("Retry-After"), 2.0**attempt)
            except aiohttp.ClientError:
                if attempt == RETRIES:
                    raise
                pause = 2.0**attempt
            self.retries += 1
            await self._sleep(min(pause, self._max_poll))
        raise AssertionError("unreachable")

    async def start(self, request: dict[str, Any]) -> Accepted:
        """``POST /api/broadcasts``."""
        return await self._start("POST", "api/broadcasts", request)

    async def update(self, notification_id: str, message: dict[str, Any]) -> Accepted:
        """``PATCH /api/broadcasts/{id}``: replace every sent message."""
        return await self._start("PATCH", f"api/broadcasts/{notification_id}", {"message": message})

    async def recall(self, notification_id: str) -> Accepted:
        """``DELETE /api/broadcasts/{id}/messages``: delete every sent message."""
        return await self._start("DELETE", f"api/broadcasts/{notification_id}/messages", None)

    async def follow(self, accepted: Accepted) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        """Poll ``Location`` honouring ``Retry-After``; yields ``(status, body)`` for every answer, the last
        one being the first that is not ``202``.

        Raises:
            BroadcastApiError: an answer that is neither ``202`` nor ``200``.
        """
        location, wait = accepted.location, accepted.retry_after
        while True:
            wait = min(wait, self._max_poll)
            self.waited.append(wait)
            await self._sleep(wait)
            status, headers, body = await self._poll(location)
            yield status, body
            if status == 200:
                return
            location = urljoin(location, headers.get("Location", location))
            wait = retry_after_seconds(headers.get("Retry-After"), wait)

    async def _poll(self, location: str) -> tuple[int, Mapping[str, str], dict[str, Any]]:
        """One poll, with the Logic Apps default retry policy for transient answers."""
        for attempt in range(RETRIES + 1):
            try:
                async with self._session.get(location, headers=self._headers) as answer:
                    self.polls += 1
                    text = await answer.text()
                    if answer.status in (200, 202):
                        return answer.status, answer.headers, await answer.json()
                    if answer.status not in TRANSIENT or attempt == RETRIES:
                        raise BroadcastApiError(answer.status, text)
                    pause = retry_after_seconds(answer.headers.get("Retry-After"), 2.0**attempt)
            except aiohttp.ClientError:
                if attempt == RETRIES:
                    raise
                pause = 2.0**attempt
            self.retries += 1
            await self._sleep(min(pause, self._max_poll))
        raise AssertionError("unreachable")

    async def run(self, accepted: Accepted, limit_seconds: float = 600.0) -> dict[str, Any]:
        """Follow to the end and return the final body.

        Raises:
            TimeoutError: still ``202`` after ``limit_seconds``.
        """
        deadline = time.monotonic() + limit_seconds
        last: dict[str, Any] = {}
        async for _, body in self.follow(accepted):
            last = body
            if time.monotonic() > deadline:
                raise TimeoutError(f"{accepted.location} still running after {limit_seconds:.0f} s")
        return last

    async def deliveries_csv(self, notification_id: str, page_size: int = 1000) -> str:
        """Every page of ``GET /api/broadcasts/{id}/deliveries?format=csv`` as one CSV (one header)."""
        parts: list[str] = []
        continuation: str | None = None
        while True:
            params = {"format": "csv", "pageSize": str(page_size)}
            if continuation:
                params["continuation"] = continuation
            path = f"api/broadcasts/{notification_id}/deliveries"
            async with self._session.get(self.url(path), params=params, headers=self._headers) as answer:
                text = await answer.text()
                if answer.status != 200:
                    raise BroadcastApiError(answer.status, text)
                continuation = answer.headers.get("X-Continuation-Token")
            lines = text.split("\r\n")
            parts.append(text if not parts else "\r\n".join(lines[1:]))
            if not continuation:
                return "".join(parts)

    async def get_json(self, path: str) -> tuple[int, Any]:
        """A GET with the key (the durable HTTP API: instances, entity state)."""
        async with self._session.get(self.url(path), headers=self._headers) as answer:
            if answer.status == 404:
                return 404, None
            return answer.status, await answer.json(content_type=None)
