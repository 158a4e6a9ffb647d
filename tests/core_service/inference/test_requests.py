from __future__ import annotations

import pytest

from core_service.errors import InvalidRequest
from core_service.inference.requests import parse_request


def test_chat_request_fields() -> None:
    request = parse_request(
        "chat.completions",
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "n": 2,'
        b' "stream": true, "stream_options": {"include_usage": true}, "top_k": 3}',
    )
    assert request.model == "m" and request.stream and request.include_usage
    assert request.max_output_tokens == 20  # n choices each up to max_tokens
    assert request.prompt_tokens_estimate == 3 + 4 + 1
    assert request.body["top_k"] == 3


def test_max_completion_tokens_wins_and_rpc_decides_streaming() -> None:
    request = parse_request(
        "chat.completions",
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5,'
        b' "max_completion_tokens": 9, "stream": true}',
        stream=False,
    )
    assert request.max_output_tokens == 9 and not request.stream


@pytest.mark.parametrize(
    "endpoint, body",
    [
        ("completions", b'{"model": "m"}'),
        ("embeddings", b'{"model": "m", "input": []}'),
        ("embeddings", b'{"model": "m", "input": 5}'),
        ("chat.completions", b'{"model": "m", "messages": [{}], "n": 0}'),
        ("chat.completions", b'{"model": "m", "messages": [{}], "max_tokens": true}'),
        ("chat.completions", b'{"model": "m", "messages": [{}], "stream_options": 1}'),
        ("chat.completions", b"\xff\xfe"),
    ],
)
def test_invalid(endpoint, body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        parse_request(endpoint, body)
