"""Bad input from users and attackers: each gets a clear OpenAI-style error, never a 500."""

from __future__ import annotations

import openai
import pytest

pytestmark = pytest.mark.asyncio

CHAT = "/v1/chat/completions"


def assert_openai_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code
    assert response.headers["x-request-id"]
    return error


async def test_malformed_json(kyma, account) -> None:
    async with kyma.http() as http:
        reply = await http.post(
            CHAT, content=b'{"model": "test-model", "messages": [', headers=_auth(account)
        )
    assert_openai_error(reply, 400)


@pytest.mark.parametrize(
    "body, param",
    [
        (b"[1, 2, 3]", None),
        (b'"just a string"', None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": 42, "messages": []}', "model"),
        (b'{"model": "test-model"}', "messages"),
        (b'{"model": "test-model", "messages": "hello"}', "messages"),
        (b'{"model": "test-model", "messages": [], "max_tokens": 1}', "messages"),
        (b'{"model": "test-model", "messages": [1, 2]}', "messages[0]"),
        (
            b'{"model": "test-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": -5}',
            "max_tokens",
        ),
        (
            b'{"model": "test-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}',
            "max_tokens",
        ),
        (
            b'{"model": "test-model", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
            "stream",
        ),
    ],
)
async def test_wrong_types_and_missing_fields(
    kyma, account, body: bytes, param: str | None
) -> None:
    async with kyma.http() as http:
        reply = await http.post(CHAT, content=body, headers=_auth(account))
    error = assert_openai_error(reply, 400)
    assert error["param"] == param


async def test_huge_body_is_refused_before_the_core(kyma, account) -> None:
    body = (
        b'{"model": "test-model", "messages": [{"role": "user", "content": "'
        + b"a" * (10 * 1024 * 1024)
        + b'"}]}'
    )
    async with kyma.http() as http:
        reply = await http.post(CHAT, content=body, headers=_auth(account))
    assert_openai_error(reply, 413, "request_too_large")


async def test_unknown_model(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "model_not_found"


@pytest.mark.parametrize(
    "key",
    [
        "ky_" + "A" * 38,  # right shape, broken checksum
        "ky_' OR '1'='1' --",
        "'; DROP TABLE api_keys; --",
        "sk-" + "x" * 48,
    ],
)
async def test_bad_keys_are_refused(kyma, key: str) -> None:
    async with kyma.client(key) as sdk:
        with pytest.raises(openai.AuthenticationError) as caught:
            await sdk.chat.completions.create(
                model="test-model", messages=[{"role": "user", "content": "hi"}]
            )
    assert caught.value.status_code == 401
    assert key not in str(caught.value.body)


async def test_missing_and_malformed_authorization(kyma) -> None:
    non_ascii = b"Bearer ky_" + "\u00e9".encode() * 19
    async with kyma.http() as http:
        raw = await http.post(
            CHAT, json={"model": "test-model"}, headers={"authorization": non_ascii}
        )
        assert_openai_error(raw, 401)
        missing = await http.post(CHAT, json={"model": "test-model", "messages": []})
        basic = await http.post(
            CHAT, json={"model": "test-model"}, headers={"authorization": "Basic Zm9vOmJhcg=="}
        )
    assert_openai_error(missing, 401)
    assert_openai_error(basic, 401)


async def test_unknown_path_and_method(kyma) -> None:
    async with kyma.http() as http:
        missing = await http.get("/v1/nothing-here")
        method = await http.get(CHAT)
    assert_openai_error(missing, 404)
    assert_openai_error(method, 405)


async def test_embeddings_cannot_stream(kyma, account) -> None:
    async with kyma.http() as http:
        reply = await http.post(
            "/v1/embeddings",
            json={"model": "test-model", "input": "x", "stream": True},
            headers=_auth(account),
        )
    assert_openai_error(reply, 400)


async def test_upstream_invalid_request_is_the_clients_400(kyma, account) -> None:
    """An upstream's own 400 (say, context too long) reaches the client as a 400 with the
    upstream's message, and is not retried elsewhere."""
    await kyma.upstream.control(error_rate=1.0, error_status=400)
    async with kyma.http() as http:
        reply = await http.post(
            CHAT,
            json={"model": "test-model", "messages": [{"role": "user", "content": "x"}]},
            headers=_auth(account),
        )
    assert_openai_error(reply, 400)


async def test_upstream_server_error_is_a_502(kyma, account) -> None:
    await kyma.upstream.control(error_rate=1.0, error_status=500)
    async with kyma.http() as http:
        reply = await http.post(
            CHAT,
            json={"model": "test-model", "messages": [{"role": "user", "content": "x"}]},
            headers=_auth(account),
        )
    error = assert_openai_error(reply, 502, "upstream_error")
    assert "sk-upstream-secret" not in error["message"]


def _auth(account) -> dict[str, str]:
    return {"authorization": f"Bearer {account[1]}"}


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"max_tokens": 10**18}, "max_tokens"),
        ({"max_tokens": 2**63 + 5}, "max_tokens"),
        ({"n": 10**6}, "n"),
        ({"max_tokens": 5000, "n": 100}, "max_tokens"),
    ],
)
async def test_absurd_output_requests_are_400s(kyma, account, extra: dict, param: str) -> None:
    body = {"model": "test-model", "messages": [{"role": "user", "content": "x"}], **extra}
    async with kyma.http() as http:
        reply = await http.post(CHAT, json=body, headers=_auth(account))
    error = assert_openai_error(reply, 400)
    assert error["param"] == param


async def test_request_larger_than_the_tpm_limit_says_so(kyma, account) -> None:
    # About 210,000 prompt tokens: more than tier 0's 200,000 a minute, however long one waits.
    body = {
        "model": "kyma-demo",
        "messages": [{"role": "user", "content": "a " * 210_000}],
        "max_tokens": 5,
    }
    async with kyma.http() as http:
        reply = await http.post(CHAT, json=body, headers=_auth(account))
    error = assert_openai_error(reply, 429, "rate_limit_exceeded")
    assert "Request too large" in error["message"]
