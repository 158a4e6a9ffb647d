"""Sign-in by emailed code and the console's web sessions, through the real bridge and core:
the cookie's attributes, CSRF on every change, a cookie from another origin worth nothing, no
session fixation, expiry by the injected clock, sign-out and sign-out everywhere, sign-in as
bounded as sign-up, every sign-in audited."""

from __future__ import annotations

import secrets

import httpx
import openai
import pytest
import pytest_asyncio

from core_service.accounts.sessions import new_token
from kyma.admin.v1 import admin_service_pb2
from tests.conftest import ISSUED_KEYS, running_kyma  # type: ignore[import-not-found]
from tests.fakes.clock import FrozenClock  # type: ignore[import-not-found]

pytestmark = pytest.mark.asyncio

COOKIE = "kyma_session"


def _remember(response: httpx.Response) -> None:
    """Tokens and keys the tests are given must never appear in a log line."""
    token = response.cookies.get(COOKIE)
    if token:
        ISSUED_KEYS.add(token)
    body = response.json() if response.headers.get("content-type") == "application/json" else {}
    for field in ("api_key", "key", "secret"):
        if isinstance(body.get(field), str) and body[field].startswith("ky_"):
            ISSUED_KEYS.add(body[field])


async def console_signup(kyma, http: httpx.AsyncClient, address: str) -> dict:
    """Sign up as the console does: the code, then a session instead of a key."""
    assert (await http.post("/v1/auth/signup", json={"email": address})).status_code == 200
    reply = await http.post(
        "/v1/auth/verify",
        json={"email": address, "code": kyma.last_code(address), "session": True},
    )
    _remember(reply)
    assert reply.status_code == 200, reply.text
    return reply.json()


async def sign_in(kyma, http: httpx.AsyncClient, address: str) -> httpx.Response:
    assert (await http.post("/v1/auth/signin", json={"email": address})).status_code == 200
    reply = await http.post(
        "/v1/auth/signin/verify", json={"email": address, "code": kyma.last_code(address)}
    )
    _remember(reply)
    return reply


def _address(kyma, name: str) -> str:
    return f"{name}-{kyma.backend}-{secrets.token_hex(3)}@example.com"


async def test_console_signup_sets_a_safe_cookie_and_no_key(kyma) -> None:
    async with kyma.http() as http:
        address = _address(kyma, "console")
        session = await console_signup(kyma, http, address)
        assert session["object"] == "session" and session["email"] == address
        assert session["csrf_token"] and session["expires_at"] > session["created_at"]
        keys = (await http.get("/v1/account/keys")).json()
        account = (await http.get("/v1/account")).json()
    assert keys["data"] == []  # no key comes from a session silently
    assert account["id"] == session["account_id"] and account["balance_usd"] == "0.500000000"
    assert account["terms"]["needs_acceptance"] is False


async def test_the_cookie_is_httponly_samesite_and_lasts_the_session(kyma) -> None:
    async with kyma.http() as http:
        address = _address(kyma, "cookie")
        assert (await http.post("/v1/auth/signup", json={"email": address})).status_code == 200
        reply = await http.post(
            "/v1/auth/verify",
            json={"email": address, "code": kyma.last_code(address), "session": True},
        )
        _remember(reply)
    cookie = reply.headers["set-cookie"].lower()
    assert cookie.startswith(f"{COOKIE}=kys_")
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
    assert f"max-age={7 * 86400}" in cookie
    assert "secure" not in cookie  # plain http on loopback; https gets Secure (test_cookies.py)


async def test_every_change_by_session_needs_the_csrf_token(kyma) -> None:
    async with kyma.http() as http:
        session = await console_signup(kyma, http, _address(kyma, "csrf"))
        csrf = {"x-csrf-token": session["csrf_token"]}
        changes = [
            ("POST", "/v1/account/keys", {"name": "k"}),
            ("PATCH", "/v1/account", {"low_balance_threshold_usd": "1"}),
            ("POST", "/v1/account/terms/accept", {"version": "2026-04-07"}),
            ("POST", "/v1/billing/checkout", {"amount_usd": "10"}),
            ("POST", "/v1/auth/signout-everywhere", {}),
            ("POST", "/v1/auth/signout", {}),
        ]
        for method, path, body in changes:
            for headers in ({}, {"x-csrf-token": "wrong"}):
                reply = await http.request(method, path, json=body, headers=headers)
                assert reply.status_code == 403, (method, path, reply.text)
                assert reply.json()["error"]["code"] == "csrf_failed"
        # Reads need no token; the same change with it goes through.
        assert (await http.get("/v1/account")).status_code == 200
        created = await http.post("/v1/account/keys", json={"name": "k"}, headers=csrf)
        _remember(created)
        assert created.status_code == 201
        revoke = await http.delete(f"/v1/account/keys/{created.json()['id']}")
        assert revoke.status_code == 403 and revoke.json()["error"]["code"] == "csrf_failed"
        assert (
            await http.delete(f"/v1/account/keys/{created.json()['id']}", headers=csrf)
        ).status_code == 200


async def test_a_session_cookie_from_another_origin_does_nothing(kyma) -> None:
    async with kyma.http() as http:
        session = await console_signup(kyma, http, _address(kyma, "origin"))
        csrf = session["csrf_token"]
        own = {"origin": kyma.http_url, "x-csrf-token": csrf}
        assert (await http.get("/v1/account", headers={"origin": kyma.http_url})).status_code == 200
        for foreign in (
            {"origin": "https://evil.example", "x-csrf-token": csrf},
            {"sec-fetch-site": "cross-site", "x-csrf-token": csrf},
        ):
            read = await http.get("/v1/account", headers=foreign)
            assert read.status_code == 401
            change = await http.post("/v1/account/keys", json={"name": "x"}, headers=foreign)
            assert change.status_code == 401
        assert (await http.get("/v1/account/keys", headers=own)).json()["data"] == []
        # A preflight from another origin is never told credentials are allowed.
        preflight = await http.options(
            "/v1/account/keys",
            headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
        )
        assert "access-control-allow-credentials" not in preflight.headers


async def test_model_endpoints_take_keys_not_sessions(kyma) -> None:
    async with kyma.http() as http:
        await console_signup(kyma, http, _address(kyma, "models"))
        reply = await http.post(
            "/v1/chat/completions",
            json={"model": "kyma-demo", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"


async def test_a_key_wins_over_a_cookie(kyma) -> None:
    account_id, key = await kyma.create_account()
    async with kyma.http() as http:
        await console_signup(kyma, http, _address(kyma, "both"))
        reply = await http.post(
            "/v1/account/keys", json={"name": "by key"}, headers={"authorization": f"Bearer {key}"}
        )
        _remember(reply)
    assert reply.status_code == 201  # the key's account, and no CSRF token needed
    async with kyma.http() as http:
        keys = (
            await http.get("/v1/account/keys", headers={"authorization": f"Bearer {key}"})
        ).json()["data"]
    assert {k["name"] for k in keys} == {"default", "by key"}


async def test_no_session_fixation(kyma) -> None:
    address = _address(kyma, "fixation")
    async with kyma.http() as victim:
        await console_signup(kyma, victim, address)
        assert (
            await victim.post("/v1/auth/signout", headers=await _csrf(victim))
        ).status_code == 200
    # A token the attacker made up, and one of the attacker's own live sessions, planted in
    # the victim's browser before the victim signs in: neither becomes the victim's session.
    async with kyma.http() as attacker:
        await console_signup(kyma, attacker, _address(kyma, "attacker"))
        planted = attacker.cookies[COOKIE]
    for before in (new_token(), planted):
        async with httpx.AsyncClient(base_url=kyma.http_url, cookies={COOKIE: before}) as victim:
            reply = await sign_in(kyma, victim, address)
            assert reply.status_code == 200
            minted = reply.cookies[COOKIE]
            assert minted != before
            assert (await victim.get("/v1/auth/session")).json()["email"] == address
        async with httpx.AsyncClient(base_url=kyma.http_url, cookies={COOKIE: before}) as old:
            assert (await old.get("/v1/auth/session")).status_code == 401


async def _csrf(http: httpx.AsyncClient) -> dict[str, str]:
    return {"x-csrf-token": (await http.get("/v1/auth/session")).json()["csrf_token"]}


async def test_sign_out_and_sign_out_everywhere(kyma) -> None:
    address = _address(kyma, "everywhere")
    async with kyma.http() as laptop, kyma.http() as phone, kyma.http() as tablet:
        await console_signup(kyma, laptop, address)
        assert (await sign_in(kyma, phone, address)).status_code == 200
        assert (await sign_in(kyma, tablet, address)).status_code == 200
        tablet_token, phone_token = tablet.cookies[COOKIE], phone.cookies[COOKIE]
        out = await tablet.post("/v1/auth/signout", headers=await _csrf(tablet))
        assert out.status_code == 200 and out.json() == {"object": "session.ended", "count": 1}
        assert "max-age=0" in out.headers["set-cookie"].lower()  # the browser forgets it
        assert await _status(kyma, tablet_token) == 401  # and it is no good anyway
        assert (await phone.get("/v1/account")).status_code == 200
        everywhere = await phone.post("/v1/auth/signout-everywhere", headers=await _csrf(phone))
        assert everywhere.status_code == 200 and everywhere.json()["count"] == 2
        # The laptop still holds its cookie: the session behind it has ended.
        assert (await laptop.get("/v1/account")).status_code == 401
        assert await _status(kyma, phone_token) == 401
    account_id = await _account_of(kyma, address)
    actions = [entry.action for entry in await _audit(kyma, account_id)]
    assert actions.count("sign_in") == 3 and "sign_out_everywhere" in actions


async def _status(kyma, token: str) -> int:
    async with httpx.AsyncClient(base_url=kyma.http_url, cookies={COOKIE: token}) as client:
        return (await client.get("/v1/auth/session")).status_code


async def _account_of(kyma, address: str) -> str:
    listed = await kyma.admin("ListAccounts", admin_service_pb2.ListAccountsRequest(page_size=500))
    return next(a.account.id for a in listed.accounts if a.account.email == address)


async def _audit(kyma, account_id: str) -> list:
    reply = await kyma.admin(
        "ListAuditEntries", admin_service_pb2.ListAuditEntriesRequest(account_id=account_id)
    )
    return list(reply.entries)


async def test_sign_in_is_audited_with_its_session_and_address(kyma) -> None:
    account_id, _ = await kyma.create_account(_address(kyma, "audited"))
    address = next(
        a.account.email
        for a in (
            await kyma.admin("ListAccounts", admin_service_pb2.ListAccountsRequest(page_size=500))
        ).accounts
        if a.account.id == account_id
    )
    async with kyma.http() as http:
        reply = await sign_in(kyma, http, address)
    assert reply.status_code == 200
    [entry] = [e for e in await _audit(kyma, account_id) if e.action == "sign_in"]
    assert entry.actor == f"account:{account_id}" and reply.json()["id"] in entry.details
    assert "127.0.0.1" in entry.details and "code mailed" in entry.reason


async def test_sign_in_reveals_nothing_and_mails_only_accounts(kyma) -> None:
    nobody = _address(kyma, "nobody")
    async with kyma.http() as http:
        reply = await http.post("/v1/auth/signin", json={"email": nobody})
        assert reply.status_code == 200 and reply.json()["status"] == "code_sent"
        assert kyma.mails_to(nobody) == []
        guess = await http.post("/v1/auth/signin/verify", json={"email": nobody, "code": "123456"})
    assert guess.status_code == 400 and guess.json()["error"]["param"] == "code"


async def test_a_sign_up_code_does_not_sign_in(kyma) -> None:
    address = _address(kyma, "purpose")
    async with kyma.http() as http:
        await console_signup(kyma, http, address)
        # A fresh sign-up code cannot be asked for (the account exists); a sign-in code
        # is no sign-up code either.
        assert (await http.post("/v1/auth/signin", json={"email": address})).status_code == 200
        reply = await http.post(
            "/v1/auth/verify", json={"email": address, "code": kyma.last_code(address)}
        )
    assert reply.status_code == 400


async def test_sign_in_guessing_is_bounded_like_sign_up(kyma) -> None:
    account_id, _ = await kyma.create_account(_address(kyma, "guessed"))
    address = (
        await kyma.admin(
            "GetAccountDetails", admin_service_pb2.GetAccountDetailsRequest(account_id=account_id)
        )
    ).summary.account.email
    async with kyma.http() as http:
        assert (await http.post("/v1/auth/signin", json={"email": address})).status_code == 200
        code = kyma.last_code(address)
        for guess in range(5):
            wrong = f"{(int(code) + 1 + guess) % 10**6:06d}"
            reply = await http.post(
                "/v1/auth/signin/verify", json={"email": address, "code": wrong}
            )
            assert reply.status_code == 400
        reply = await http.post("/v1/auth/signin/verify", json={"email": address, "code": code})
        assert reply.status_code == 400  # dead after five wrong guesses, even the right code
        # Code requests per person: 3 a minute (two more after the first), then 429.
        for _ in range(2):
            assert (await http.post("/v1/auth/signin", json={"email": address})).status_code == 200
        reply = await http.post("/v1/auth/signin", json={"email": address})
    assert (
        reply.status_code == 429 and "Too many sign-in requests" in reply.json()["error"]["message"]
    )


# -- expiry, on a core whose clock the test moves ------------------------------------------


@pytest_asyncio.fixture(scope="module")
async def clocked(upstream, tmp_path_factory):
    clock = FrozenClock()
    async with running_kyma(
        tmp_path_factory.mktemp("sessions-clock"),
        None,
        upstream,
        "sqlite",
        clock=clock,
        session_lifetime_seconds=7200,
        session_idle_seconds=3600,
    ) as kyma:
        kyma.clock = clock  # type: ignore[attr-defined]
        yield kyma


async def test_sessions_end_after_idle_time_and_their_lifetime(clocked) -> None:
    clock = clocked.clock
    async with clocked.http() as http:
        await console_signup(clocked, http, f"clock-{secrets.token_hex(3)}@example.com")
        for _ in range(2):  # used every 50 minutes: never idle for an hour
            clock.advance(3000)
            assert (await http.get("/v1/account")).status_code == 200
        clock.advance(3601)  # an hour and a second without use
        assert (await http.get("/v1/account")).status_code == 401
    async with clocked.http() as http:
        await console_signup(clocked, http, f"life-{secrets.token_hex(3)}@example.com")
        for _ in range(2):
            clock.advance(3500)
            assert (await http.get("/v1/auth/session")).status_code == 200
        clock.advance(201)  # 7,201 s after it began, however busy
        reply = await http.get("/v1/auth/session")
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_session"


async def test_an_openai_client_cannot_use_a_session(clocked) -> None:
    async with clocked.http() as http:
        await console_signup(clocked, http, f"sdk-{secrets.token_hex(3)}@example.com")
        token = http.cookies[COOKIE]
    async with openai.AsyncOpenAI(base_url=clocked.base_url, api_key=token, max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError):
            await sdk.models.list()
