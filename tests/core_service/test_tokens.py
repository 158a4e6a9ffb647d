from __future__ import annotations

from core_service import tokens


def test_counts_words_punctuation_and_long_words() -> None:
    assert tokens.count_tokens("") == 0
    assert tokens.count_tokens("Hello, world!") == 4
    assert tokens.count_tokens("internationalisation") == 4  # 20 chars: 6+6+6+2


def test_chat_prompt_counts_overheads_and_parts() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {}}],
        },
    ]
    assert tokens.count_chat_prompt(messages) == 3 + (4 + 3) + (4 + 1 + 85)


def test_text_inputs_of_every_shape() -> None:
    assert tokens.count_text_inputs("a b") == 2
    assert tokens.count_text_inputs(["a", "b c"]) == 3
    assert tokens.count_text_inputs([1, 2, 3]) == 3
    assert tokens.count_text_inputs([[1, 2], [3]]) == 3
    assert tokens.count_text_inputs(None) == 0
