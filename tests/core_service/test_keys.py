from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from core_service import keys


def test_generated_keys_are_well_formed_and_distinct() -> None:
    generated = {keys.generate() for _ in range(200)}
    assert len(generated) == 200
    for key in generated:
        assert key.startswith("ky_") and len(key) == keys.KEY_LENGTH
        assert keys.is_well_formed(key)
        assert keys.display_prefix(key) == key[:9]


def test_one_changed_character_breaks_the_checksum() -> None:
    key = keys.generate()
    for index in range(3, len(key)):
        replacement = "A" if key[index] != "A" else "B"
        assert not keys.is_well_formed(key[:index] + replacement + key[index + 1 :])


@given(st.text(max_size=60))
def test_arbitrary_text_is_not_a_key(text: str) -> None:
    assert not keys.is_well_formed(text) or text.startswith("ky_")


def test_hash_is_stable_and_not_the_key() -> None:
    key = keys.generate()
    assert keys.hash_key(key) == keys.hash_key(key)
    assert key.encode() not in keys.hash_key(key)
