from __future__ import annotations

import orjson
import pytest

from core_service.errors import UpstreamError
from core_service.inference.streams import StreamRelay


def chunk(content: str | None = None, *, usage: dict | None = None, choices: bool = True) -> bytes:
    body: dict = {"id": "c1", "object": "chat.completion.chunk", "model": "upstream-x"}
    body["choices"] = [{"index": 0, "delta": {"content": content}}] if choices else []
    if usage is not None:
        body["usage"] = usage
    return orjson.dumps(body)


def test_rewrites_model_and_hides_usage_the_client_did_not_ask_for() -> None:
    relay = StreamRelay(public_model="public", include_usage=False, prompt_estimate=5)
    out = relay.rewrite(chunk("Hello"))
    assert out is not None and orjson.loads(out)["model"] == "public"
    assert (
        relay.rewrite(chunk(usage={"prompt_tokens": 3, "completion_tokens": 1}, choices=False))
        is None
    )
    assert relay.usage(complete=True).prompt_tokens == 3


def test_broken_stream_is_charged_for_what_was_delivered() -> None:
    relay = StreamRelay(public_model="p", include_usage=True, prompt_estimate=7)
    for word in ("one ", "two ", "three"):
        relay.rewrite(chunk(word))
    usage = relay.usage(complete=False)
    assert usage.estimated and usage.completion_tokens == 3 and usage.prompt_tokens == 7


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -1, "completion_tokens": 2},
        {"prompt_tokens": 1.5, "completion_tokens": 2},
        {"prompt_tokens": 10**12, "completion_tokens": 1},
        {"prompt_tokens": "3"},
    ],
)
def test_unbelievable_usage_is_estimated_instead(usage: dict) -> None:
    relay = StreamRelay(public_model="p", include_usage=True, prompt_estimate=4)
    relay.rewrite(chunk("a b"))
    relay.rewrite(chunk(usage=usage, choices=False))
    counted = relay.usage(complete=True)
    assert counted.estimated and counted.prompt_tokens == 4 and counted.completion_tokens == 2


def test_error_events_and_garbage_raise() -> None:
    relay = StreamRelay(public_model="p", include_usage=True, prompt_estimate=0)
    with pytest.raises(UpstreamError):
        relay.rewrite(b'{"error": {"message": "overloaded"}}')
    with pytest.raises(UpstreamError):
        relay.rewrite(b"not json")
