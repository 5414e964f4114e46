"""JSON from outside the process (request bodies, queue messages, continuation tokens).

``json.loads`` raises ``RecursionError`` for input nested deeper than the interpreter's stack allows
(``b"[" * 200000``): not a ``ValueError``, so every ``except ValueError`` around it let a crafted body
through as a 500 or a crashed trigger. :func:`loads` turns that into :class:`JsonTooDeep`, a
``ValueError``, so callers keep one ``except ValueError`` for every kind of bad JSON.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["JsonTooDeep", "loads"]


class JsonTooDeep(ValueError):
    """The JSON is nested too deeply to parse."""


def loads(raw: str | bytes | bytearray) -> Any:
    """``json.loads`` that raises only ``ValueError`` (``UnicodeDecodeError`` and :class:`JsonTooDeep` included).

    Raises:
        ValueError: not valid JSON, not UTF-8, or nested too deeply.
    """
    try:
        return json.loads(raw)
    except RecursionError:
        raise JsonTooDeep("the JSON is nested too deeply") from None
