"""Kyma's own token counter: used for hold estimates, for the demo model, and for usage an
upstream did not report.

It approximates a BPE tokenizer closely enough for holds (which are settled at the upstream's
real counts) without loading any vocabulary: a word is one token per six characters, and each
punctuation mark is a token. The demo model and the test upstream count with it too, so their
reported usage is exact for the text they produce.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_PIECE = re.compile(r"\w{1,6}|[^\w\s]")

# What OpenAI's chat format adds per message (role, separators) and per reply (priming).
MESSAGE_OVERHEAD_TOKENS = 4
REPLY_OVERHEAD_TOKENS = 3


def split_tokens(text: str) -> list[str]:
    """The pieces `count_tokens` counts, in order (whitespace dropped)."""
    return _PIECE.findall(text)


def count_tokens(text: str) -> int:
    return len(_PIECE.findall(text))


def _count_content(content: Any) -> int:
    """Tokens in a message `content`: a string, or a list of parts (text counted, others 85 each
    as OpenAI counts a low-detail image)."""
    if isinstance(content, str):
        return count_tokens(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                total += count_tokens(text) if isinstance(text, str) else 85
            elif isinstance(part, str):
                total += count_tokens(part)
        return total
    return 0


def count_chat_prompt(messages: Iterable[Any]) -> int:
    total = REPLY_OVERHEAD_TOKENS
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += MESSAGE_OVERHEAD_TOKENS + _count_content(message.get("content"))
        name = message.get("name")
        if isinstance(name, str):
            total += count_tokens(name)
        tool_calls = message.get("tool_calls")
        if isinstance(tool_calls, list):
            total += count_tokens(str(tool_calls))
    return total


def count_text_inputs(value: Any) -> int:
    """Tokens in a completions `prompt` or embeddings `input`: a string, a list of strings, a
    list of token ids, or a list of lists of token ids."""
    if isinstance(value, str):
        return count_tokens(value)
    if isinstance(value, list):
        total = 0
        for item in value:
            if isinstance(item, str):
                total += count_tokens(item)
            elif isinstance(item, int):
                total += 1
            elif isinstance(item, list):
                total += len(item)
        return total
    return 0
