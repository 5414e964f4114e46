"""Key encoding: reversible, collision-free, always a valid Azure Table key."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proactive.storage.keys import MAX_KEY_LENGTH, compose, decode_key, encode_key

FORBIDDEN = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")


@given(st.text(min_size=1, max_size=300))
def test_encoded_keys_are_valid_and_reversible_when_short(value: str) -> None:
    key = encode_key(value)
    assert not FORBIDDEN.search(key)
    assert len(key) <= MAX_KEY_LENGTH
    if "~" not in key:
        assert decode_key(key) == value


@given(st.text(min_size=1, max_size=400), st.text(min_size=1, max_size=400))
def test_different_ids_never_share_a_key(a: str, b: str) -> None:
    if a != b:
        assert encode_key(a) != encode_key(b)


@given(
    st.lists(st.text(min_size=1, max_size=40), min_size=2, max_size=3),
    st.lists(st.text(min_size=1, max_size=40), min_size=2, max_size=3),
)
def test_composite_keys_do_not_collide_across_part_boundaries(a: list[str], b: list[str]) -> None:
    if a != b:
        assert compose(*a) != compose(*b)


def test_over_long_ids_are_hashed_and_refuse_decoding() -> None:
    key = encode_key("x" * 1000)
    assert len(key) == MAX_KEY_LENGTH and "~" in key
    with pytest.raises(ValueError, match="hashed"):
        decode_key(key)


def test_escape_sequences_are_never_cut_by_truncation() -> None:
    key = encode_key("/" * 400)
    prefix = key.split("~")[0]
    assert re.fullmatch(r"(%2F)*", prefix)


@pytest.mark.parametrize("bad", ["", None])
def test_empty_ids_are_a_caller_bug(bad: str | None) -> None:
    with pytest.raises((ValueError, TypeError)):
        encode_key(bad)  # type: ignore[arg-type]
    with pytest.raises((ValueError, TypeError)):
        compose("n", bad)  # type: ignore[arg-type]
