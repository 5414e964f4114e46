"""Table Storage key encoding.

Azure Tables rejects ``/ \\ # ?`` and control characters (U+0000-U+001F, U+007F-U+009F) in
PartitionKey and RowKey, and limits each key to 1 KiB. Ids reaching us (AAD object ids, Teams
conversation ids such as ``19:abc@thread.tacv2;messageid=1``, caller-chosen notification ids) are
not ours to constrain, so every key goes through :func:`encode_key`:

* ``%`` and every forbidden character are percent-encoded (``%2F``), so the encoding is reversible
  and two different ids never share a key;
* a value whose encoding is longer than :data:`MAX_KEY_LENGTH` keeps a readable prefix and ends in
  ``~`` + the SHA-256 of the full id. That form is not reversible, which is why every row also
  stores its original ids as ordinary properties.
"""

from __future__ import annotations

import hashlib
import re

# 1 KiB is the documented limit; keys are UTF-16 on the wire, so 255 characters keeps a wide margin
# and leaves room for composite keys ("{notificationId}:{tenantId}") built from encoded parts.
MAX_KEY_LENGTH = 255
_HASH_MARK = "~"
_FORBIDDEN = re.compile(r"[%/\\#?\x00-\x1f\x7f-\x9f~]")
_FORBIDDEN_IN_PART = re.compile(r"[%/\\#?\x00-\x1f\x7f-\x9f~:]")


def encode_key(value: str) -> str:
    """Encode ``value`` into a string that is a valid Azure Table key.

    Raises:
        ValueError: ``value`` is empty (an empty id is always a caller bug here).
    """
    if not value:
        raise ValueError("a table key cannot be built from an empty id")
    return _bounded(_escape(_FORBIDDEN, value), value)


def compose(*parts: str) -> str:
    """Join several ids into one key, e.g. ``{notificationId}:{tenantId}``.

    Each part's own ``:`` is escaped too, so ``("a:b", "c")`` and ``("a", "b:c")`` never collide.

    Raises:
        ValueError: a part is empty.
    """
    if not parts or not all(parts):
        raise ValueError("a composite table key cannot have empty parts")
    joined = ":".join(_escape(_FORBIDDEN_IN_PART, part) for part in parts)
    return _bounded(joined, joined)


def decode_key(key: str) -> str:
    """Reverse :func:`encode_key` for keys that were not hashed.

    Raises:
        ValueError: the key was hashed (too long to be reversible).
    """
    if _HASH_MARK in key:
        raise ValueError("hashed key: read the original id from the row's properties")
    return re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), key)


def _escape(pattern: re.Pattern[str], value: str) -> str:
    return pattern.sub(lambda m: f"%{ord(m.group()):02X}", value)


def _bounded(encoded: str, original: str) -> str:
    if len(encoded) <= MAX_KEY_LENGTH:
        return encoded
    digest = hashlib.sha256(original.encode("utf-8")).hexdigest()
    # Never cut an escape sequence in half: drop a trailing partial "%X".
    prefix = re.sub(r"%[0-9A-F]?$", "", encoded[: MAX_KEY_LENGTH - len(digest) - 1])
    return f"{prefix}{_HASH_MARK}{digest}"
