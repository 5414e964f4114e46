"""Opaque continuation tokens for table queries.

Azure Tables pages with a ``{"PartitionKey": ..., "RowKey": ...}`` pair (the next row to read).
Callers receive it as one URL-safe string, the same from the real adapter and the in-memory fake.
"""

from __future__ import annotations

import base64
import json

from proactive import json_input
from proactive.errors import InvalidInput


def encode_continuation(position: dict[str, str]) -> str:
    """Turn a service continuation position into an opaque URL-safe token."""
    raw = json.dumps(position, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_continuation(token: str) -> dict[str, str]:
    """Reverse :func:`encode_continuation`.

    Raises:
        InvalidInput: the token was not made by :func:`encode_continuation` (e.g. a caller edited it).
    """
    try:
        data = json_input.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError("not a position")
        return {str(k): v for k, v in data.items()}
    except (ValueError, TypeError) as exc:
        raise InvalidInput(
            "malformed continuation token", code="invalid_continuation", field="continuation"
        ) from exc
