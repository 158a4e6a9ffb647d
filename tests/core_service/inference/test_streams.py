from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core_service.billing.metering import Charge
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


def charge(usage, cost: int = 1234):  # type: ignore[no-untyped-def]
    return Charge(usage, cost)


def test_the_usage_chunk_comes_last_with_the_charge() -> None:
    relay = StreamRelay(public_model="p", include_usage=True, prompt_estimate=4)
    reported = {
        "prompt_tokens": 10,
        "completion_tokens": 2,
        "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 6},
        "completion_tokens_details": {"reasoning_tokens": 1},
    }
    relay.rewrite(chunk("a b"))
    # The upstream's usage chunk is held back: its cost is known only once the stream ended.
    assert relay.rewrite(chunk(usage=reported, choices=False)) is None
    usage = relay.usage(complete=True)
    assert (usage.cached_tokens, usage.reasoning_tokens) == (6, 1)
    [last] = relay.closing_chunks(charge(usage, 5_250), cut=False)
    body = orjson.loads(last)
    assert body["choices"] == [] and body["model"] == "p" and body["id"] == "c1"
    assert body["usage"] == {**reported, "cost": "0.000005250"}


def test_usage_on_a_text_chunk_moves_to_the_last_chunk() -> None:
    relay = StreamRelay(public_model="p", include_usage=True, prompt_estimate=4)
    out = relay.rewrite(chunk("a", usage={"prompt_tokens": 3, "completion_tokens": 1}))
    assert out is not None and orjson.loads(out)["usage"] is None
    [last] = relay.closing_chunks(charge(relay.usage(complete=True), 7), cut=False)
    assert orjson.loads(last)["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 1,
        "cost": "0.000000007",
    }


def test_kyma_counts_and_says_so_when_the_upstream_reports_nothing() -> None:
    relay = StreamRelay(public_model="p", include_usage=True, prompt_estimate=4)
    relay.rewrite(chunk("a b"))
    [last] = relay.closing_chunks(charge(relay.usage(complete=True), 9), cut=False)
    assert orjson.loads(last)["usage"] == {
        "prompt_tokens": 4,
        "completion_tokens": 2,
        "total_tokens": 6,
        "estimated": True,
        "cost": "0.000000009",
    }


def test_no_usage_chunk_unless_asked() -> None:
    relay = StreamRelay(public_model="p", include_usage=False, prompt_estimate=4)
    relay.rewrite(chunk("a b"))
    relay.rewrite(chunk(usage={"prompt_tokens": 3, "completion_tokens": 2}, choices=False))
    assert relay.closing_chunks(charge(relay.usage(complete=True)), cut=False) == []


def _as_the_client_gets_it(raw: bytes, *, include_usage: bool, public: str) -> dict:
    """What a relayed text chunk says: the upstream's, with the public model name and the
    usage the client did not ask for (or that moves to the end) taken out."""
    expected = orjson.loads(raw)
    if not include_usage:
        expected.pop("usage", None)
    elif expected.get("usage") is not None:
        expected["usage"] = None
    if "model" in expected:
        expected["model"] = public
    return expected


@settings(max_examples=300, deadline=None)
@given(
    content=st.sampled_from(
        ["Hello", "model", '"model":"upstream-x"', 'say "model"', "é ü 😀", "a\nb", ""]
    ),
    model=st.sampled_from(["upstream-x", "model", 'we"ird/ünï', None]),
    usage=st.sampled_from(["absent", "null"]),
    spaced=st.booleans(),
    include_usage=st.booleans(),
    public=st.sampled_from(["public", "upstream-x", 'pub"lic']),
)
def test_relayed_chunks_say_what_a_reencoded_one_says(
    content: str, model: str | None, usage: str, spaced: bool, include_usage: bool, public: str
) -> None:
    body: dict = {"id": "c1", "object": "chat.completion.chunk"}
    if model is not None:
        body["model"] = model
    body["choices"] = [{"index": 0, "delta": {"content": content}}]
    if usage == "null":
        body["usage"] = None
    raw = json.dumps(body, separators=(", ", ": ") if spaced else (",", ":")).encode()
    relay = StreamRelay(public_model=public, include_usage=include_usage, prompt_estimate=1)
    out = relay.rewrite(raw)
    assert out is not None and b"\n" not in out
    assert orjson.loads(out) == _as_the_client_gets_it(
        raw, include_usage=include_usage, public=public
    )
    assert relay.chunks_delivered == 1


def test_an_unchanged_chunk_is_relayed_as_the_upstream_wrote_it() -> None:
    raw = chunk("Hello")
    relay = StreamRelay(public_model="public", include_usage=False, prompt_estimate=1)
    assert relay.rewrite(raw) == raw.replace(b'"upstream-x"', b'"public"')
    assert relay.delivered_tokens == 1
