"""Sign-up signals an abuser would forge, and the limits they would race.

- A gRPC caller without the bridge credential cannot name its client address (`x-client-ip`)
  or fingerprint: the core counts it by its own address, so spoofing a fresh address per call
  does not get past the per-address limit. The operator's bridge, which presents the
  credential, is believed.
- One mailbox cannot farm welcome bonuses through provider aliases (Fastmail subdomain
  addressing, the Proton domain family, Gmail dots and +tags); disposable-mail domains are
  refused.
- Limits that concurrent requests race: live keys per account, wrong guesses per code, code
  checks per client address. The assertions are on counts, never on timing; rate-limit windows
  run on a frozen clock.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import stat
import threading
from types import SimpleNamespace

import grpc
import pytest
import pytest_asyncio
from sqlalchemy import select

from core_service.db.models import Account, SignupCode
from core_service.edge.signup import client_signals, peer_ip
from core_service.settings import Settings
from http_bridge.core_client import CoreStubs
from kyma.accounting.v1 import signup_service_pb2 as signup_pb
from kyma.accounting.v1 import signup_service_pb2_grpc as signup_grpc
from kyma.contract.v1.constants import MetadataKey
from tests.conftest import ISSUED_KEYS, running_kyma  # type: ignore[import-not-found]
from tests.fakes.clock import FrozenClock  # type: ignore[import-not-found]

PER_ADDRESS = 5  # the default KYMA_SIGNUPS_PER_IP_PER_MINUTE


@pytest_asyncio.fixture
async def guarded(upstream, tmp_path):
    """A Kyma with the default per-address sign-up limit, on a clock that stands still."""
    async with running_kyma(
        tmp_path,
        None,
        upstream,
        "sqlite",
        clock=FrozenClock(),
        signups_per_ip_per_minute=PER_ADDRESS,
        verifications_per_ip_per_minute=PER_ADDRESS,
    ) as kyma:
        yield kyma


def _stub(kyma) -> signup_grpc.SignupServiceStub:
    return signup_grpc.SignupServiceStub(kyma.channel)


async def _grpc_signup(kyma, address: str, metadata: tuple[tuple[str, str], ...]) -> bool:
    """The whole sign-up over gRPC; False when the code request was refused as over a limit."""
    stub = _stub(kyma)
    try:
        await stub.StartSignup(signup_pb.StartSignupRequest(email=address), metadata=metadata)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        return False
    reply = await stub.CompleteSignup(
        signup_pb.CompleteSignupRequest(email=address, code=kyma.last_code(address)),
        metadata=metadata,
    )
    ISSUED_KEYS.add(reply.api_key_secret)
    return True


async def _recorded(kyma, addresses: list[str]) -> list[tuple[str | None, str | None]]:
    async with kyma.core.storage.reads.connect() as conn:
        rows = await conn.execute(
            select(Account.signup_ip, Account.signup_fingerprint).where(
                Account.email.in_(addresses)
            )
        )
        return [(row.signup_ip, row.signup_fingerprint) for row in rows]


async def test_a_spoofed_client_ip_over_grpc_does_not_get_past_the_per_address_limit(
    guarded, caplog
) -> None:
    addresses = [f"spoof-{i}@example.com" for i in range(12)]
    passed = []
    with caplog.at_level(logging.WARNING, logger="core_service.edge.signup"):
        for i, address in enumerate(addresses):
            # A fresh address and device every time, and for half of them a made-up credential.
            metadata: tuple[tuple[str, str], ...] = (
                (MetadataKey.CLIENT_IP.value, f"203.0.113.{i + 1}"),
                (MetadataKey.CLIENT_FINGERPRINT.value, f"device-{i}"),
            )
            if i % 2:
                metadata += ((MetadataKey.BRIDGE_TOKEN.value, "kybrg_" + secrets.token_hex(16)),)
            passed.append(await _grpc_signup(guarded, address, metadata))
    assert sum(passed) == PER_ADDRESS and passed[:PER_ADDRESS] == [True] * PER_ADDRESS
    # Counted, and recorded, as what they are: callers from the loopback, with no fingerprint.
    recorded = await _recorded(guarded, addresses)
    assert recorded == [("127.0.0.1", None)] * PER_ADDRESS
    warnings = [r for r in caplog.records if "without the bridge credential" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not once per call


async def test_the_bridge_credential_makes_the_forwarded_address_believed(guarded) -> None:
    token = guarded.settings.bridge_credential()  # what the bridge beside this core read
    addresses = [f"internal-{i}@example.com" for i in range(12)]
    passed = [
        await _grpc_signup(
            guarded,
            address,
            (
                (MetadataKey.BRIDGE_TOKEN.value, token),
                (MetadataKey.CLIENT_IP.value, f"198.51.100.{i + 1}"),
                (MetadataKey.CLIENT_FINGERPRINT.value, f"laptop-{i}"),
            ),
        )
        for i, address in enumerate(addresses)
    ]
    assert all(passed)
    assert sorted(await _recorded(guarded, addresses)) == sorted(
        (f"198.51.100.{i + 1}", f"laptop-{i}") for i in range(12)
    )


async def test_the_real_bridge_forwards_the_client_address_and_is_believed(guarded) -> None:
    """Through HTTP: the bridge takes the client's address from X-Forwarded-For (its proxy, on
    the loopback, is trusted) and the core believes it, because the bridge sends the
    credential both read from the shared data directory."""

    async def signup(http, address: str, client: str) -> int:
        reply = await http.post(
            "/v1/auth/signup",
            json={"email": address},
            headers={"x-forwarded-for": client, "x-client-fingerprint": "phone-1"},
        )
        return reply.status_code

    async with guarded.http() as http:
        spread = [
            await signup(http, f"spread-{i}@example.com", f"192.0.2.{i + 1}") for i in range(12)
        ]
        crowd = [await signup(http, f"crowd-{i}@example.com", "192.0.2.200") for i in range(12)]
        verified = await http.post(
            "/v1/auth/verify",
            json={
                "email": "spread-3@example.com",
                "code": guarded.last_code("spread-3@example.com"),
            },
        )
    assert spread == [200] * 12  # twelve clients: none of them near its limit
    assert crowd == [200] * PER_ADDRESS + [429] * (12 - PER_ADDRESS)  # one client: five
    assert verified.status_code == 201
    ISSUED_KEYS.add(verified.json()["api_key"])
    assert await _recorded(guarded, ["spread-3@example.com"]) == [("192.0.2.4", "phone-1")]
    token_file = guarded.settings.bridge_token_file
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


def test_the_bridge_token_is_made_once_whoever_comes_first(tmp_path) -> None:
    """The core and the bridge of `kyma serve` start at once and may both find no token file:
    they end up with the same token."""
    settings = Settings(data_dir=tmp_path / "data")
    tokens: list[str] = []
    start = threading.Barrier(8)

    def read() -> None:
        start.wait()
        tokens.append(settings.bridge_credential())

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(tokens)) == 1 and tokens[0].startswith("kybrg_")
    assert settings.bridge_token_file.read_text().strip() == tokens[0]
    assert [p.name for p in settings.data_dir.iterdir()] == ["bridge_token"]  # no drafts left
    given = Settings(data_dir=tmp_path / "data", bridge_token="kybrg_given")
    assert given.bridge_credential() == "kybrg_given"  # a configured token wins
    with pytest.raises(ValueError):
        Settings(data_dir=tmp_path, bridge_token=" ").bridge_credential()


def test_a_bridge_that_cannot_have_the_token_still_starts(tmp_path, caplog) -> None:
    """A data dir the bridge cannot write (here: a file in its place) is logged, and the bridge
    runs on, sending no credential: the core then counts its sign-ups by the bridge's address."""
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    with caplog.at_level(logging.ERROR, logger="http_bridge.core_client"):
        assert CoreStubs.credential(Settings(data_dir=blocked)) is None
    assert any("KYMA_BRIDGE_TOKEN" in r.getMessage() for r in caplog.records)
    assert CoreStubs.credential(Settings(data_dir=blocked, bridge_token="kybrg_x")) == "kybrg_x"


def _context(peer: str, metadata: tuple[tuple[str, str], ...]) -> SimpleNamespace:
    return SimpleNamespace(peer=lambda: peer, invocation_metadata=lambda: metadata)


def test_without_the_credential_the_peer_is_the_client() -> None:
    token = b"kybrg_right"
    forged = ((MetadataKey.CLIENT_IP.value, "10.9.8.7"), ("x-client-fingerprint", "dev"))
    for peer, ip in [
        ("ipv4:192.0.2.1:50432", "192.0.2.1"),
        ("ipv6:[2001:db8::1]:50432", "2001:db8::1"),
        ("ipv6:%5B2001:db8::2%5D:50432", "2001:db8::2"),
        ("unix:/tmp/kyma.sock", None),
    ]:
        context = _context(peer, forged)
        assert peer_ip(context) == ip  # type: ignore[arg-type]
        signals = client_signals(context, token)  # type: ignore[arg-type]
        assert (signals.ip, signals.fingerprint) == (ip, None)
        wrong = _context(peer, (*forged, (MetadataKey.BRIDGE_TOKEN.value, "kybrg_wrong")))
        assert client_signals(wrong, token).ip == ip  # type: ignore[arg-type]
        right = _context(peer, (*forged, (MetadataKey.BRIDGE_TOKEN.value, "kybrg_right")))
        signals = client_signals(right, token)  # type: ignore[arg-type]
        assert (signals.ip, signals.fingerprint) == ("10.9.8.7", "dev")


async def _http_signup(kyma, address: str) -> tuple[int, dict]:
    async with kyma.http() as http:
        reply = await http.post("/v1/auth/signup", json={"email": address})
    return reply.status_code, reply.json()


async def _sign_up(kyma, address: str) -> str:
    status, body = await _http_signup(kyma, address)
    assert status == 200, body
    async with kyma.http() as http:
        reply = await http.post(
            "/v1/auth/verify", json={"email": address, "code": kyma.last_code(address)}
        )
    assert reply.status_code == 201, reply.text
    ISSUED_KEYS.add(reply.json()["api_key"])
    return reply.json()["id"]


@pytest.mark.parametrize(
    "first, aliases",
    [
        # Fastmail: anything@user.fastmail.com is user@fastmail.com (and _ is - there).
        ("{u}@fastmail.com", ["shop@{u}.fastmail.com", "news+x@{U}.FastMail.com"]),
        ("{u}_x@fastmail.com", ["b@{u}-x.fastmail.com", "{u}_x+t@fastmail.com"]),
        # Proton: one mailbox on proton.me, protonmail.com, protonmail.ch and pm.me, with
        # dots, underscores and hyphens transparent.
        ("{u}.doe@proton.me", ["{u}doe@protonmail.com", "{u}_doe+x@pm.me"]),
        ("{u}doe@pm.me", ["{U}-Doe@protonmail.ch", "{u}.d.o.e@proton.me"]),
        # Gmail: dots and +tags, googlemail.com.
        ("{u}.ab@gmail.com", ["{u}ab+bonus@gmail.com", "{U}.A.B@googlemail.com"]),
    ],
)
async def test_one_mailbox_cannot_farm_bonuses_through_aliases(
    kyma, first: str, aliases: list[str]
) -> None:
    """(At most two aliases a case: a person asks for three codes a minute at most.)"""
    user = f"farm{kyma.backend}{secrets.token_hex(3)}"
    await _sign_up(kyma, first.format(u=user, U=user.upper()))
    for alias in aliases:
        status, body = await _http_signup(kyma, alias.format(u=user, U=user.upper()))
        assert status == 409, (alias, body)
        assert "one account per person" in body["error"]["message"]


@pytest.mark.parametrize(
    "address",
    [
        "someone@mailinator.com",
        "Someone@MAILINATOR.COM",
        "x@guerrillamail.com",
        "y@sub.yopmail.com",
    ],
)
async def test_disposable_addresses_are_refused(kyma, address: str) -> None:
    status, body = await _http_signup(kyma, address)
    assert status == 400 and body["error"]["param"] == "email"
    assert "disposable" in body["error"]["message"]
    assert kyma.mails_to(address) == []  # no code was sent


async def test_sixty_concurrent_key_creations_leave_exactly_25_live_keys(kyma) -> None:
    _, key = await kyma.create_account()  # it holds its first key already
    auth = {"authorization": f"Bearer {key}"}
    async with kyma.http() as http:
        replies = await asyncio.gather(
            *(
                http.post("/v1/account/keys", json={"name": f"k{i}"}, headers=auth)
                for i in range(60)
            )
        )
        for reply in replies:
            if reply.status_code == 201:
                ISSUED_KEYS.add(reply.json()["key"])
        statuses = sorted(reply.status_code for reply in replies)
        listed = (await http.get("/v1/account/keys", headers=auth)).json()["data"]
    assert statuses == [201] * 24 + [400] * 36
    assert len([k for k in listed if k["revoked_at"] is None]) == 25


async def _failed_attempts(kyma, canonical: str) -> int | None:
    async with kyma.core.storage.reads.connect() as conn:
        return await conn.scalar(
            select(SignupCode.failed_attempts).where(SignupCode.email_canonical == canonical)
        )


async def test_concurrent_wrong_guesses_count_exactly_max_attempts(kyma) -> None:
    address = f"racer-{kyma.backend}-{secrets.token_hex(3)}@example.com"
    assert (await _http_signup(kyma, address))[0] == 200
    code = kyma.last_code(address)
    wrong = [f"{(int(code) + 1 + i) % 10**6:06d}" for i in range(40)]
    stub = _stub(kyma)

    async def guess(candidate: str) -> grpc.StatusCode:
        try:
            await stub.CompleteSignup(
                signup_pb.CompleteSignupRequest(email=address, code=candidate)
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    codes = await asyncio.gather(*(guess(candidate) for candidate in wrong))
    assert set(codes) == {grpc.StatusCode.INVALID_ARGUMENT}
    max_attempts = kyma.settings.signup_max_attempts
    assert await _failed_attempts(kyma, address) == max_attempts  # never one more
    # The code is dead: even the right one is refused now.
    assert await guess(code) == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_right_guess_among_concurrent_ones_is_judged_only_within_the_attempts(
    kyma,
) -> None:
    """With one attempt left, one wrong and one right guess race: whichever is counted first
    is judged, the other finds the code dead or used. At most one account, and the count never
    passes the limit."""
    address = f"last-{kyma.backend}-{secrets.token_hex(3)}@example.com"
    assert (await _http_signup(kyma, address))[0] == 200
    code = kyma.last_code(address)
    max_attempts = kyma.settings.signup_max_attempts
    stub = _stub(kyma)
    for i in range(max_attempts - 1):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.CompleteSignup(
                signup_pb.CompleteSignupRequest(
                    email=address, code=f"{(int(code) + 1 + i) % 10**6:06d}"
                )
            )

    async def guess(candidate: str) -> bool:
        try:
            reply = await stub.CompleteSignup(
                signup_pb.CompleteSignupRequest(email=address, code=candidate)
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            return False
        ISSUED_KEYS.add(reply.api_key_secret)
        return True

    wrong = [f"{(int(code) + 500 + i) % 10**6:06d}" for i in range(9)]
    results = await asyncio.gather(*(guess(c) for c in [*wrong, code]))
    assert sum(results) <= 1
    left = await _failed_attempts(kyma, address)
    assert (left is None) == (sum(results) == 1)  # a right guess took the code with it
    assert left is None or left == max_attempts


async def test_concurrent_code_checks_from_one_address_stop_at_the_limit(guarded) -> None:
    address = "checks@example.com"
    async with guarded.http() as http:
        assert (await http.post("/v1/auth/signup", json={"email": address})).status_code == 200
        wrong = f"{(int(guarded.last_code(address)) + 1) % 10**6:06d}"
        replies = await asyncio.gather(
            *(
                http.post("/v1/auth/verify", json={"email": address, "code": wrong})
                for _ in range(30)
            )
        )
    statuses = sorted(reply.status_code for reply in replies)
    assert statuses == [400] * PER_ADDRESS + [429] * (30 - PER_ADDRESS)
