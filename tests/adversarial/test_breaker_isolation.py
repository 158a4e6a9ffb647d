"""One tenant cannot take a model down for the others: requests that make the upstream answer
500 (it chokes on their input) fail only themselves. The attacker gets the upstream's own
reason and pays nothing; the deployment is never ejected for anyone else, on HTTP or gRPC;
a victim's availability stays at 100% throughout."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import orjson

from kyma.admin.v1 import admin_service_pb2
from kyma.inference.v1 import inference_service_pb2 as pb
from kyma.inference.v1 import inference_service_pb2_grpc as pb_grpc

POISON = "POISON-PILL"


def _chat(text: str) -> dict:
    return {"model": "test-model", "messages": [{"role": "user", "content": text}], "max_tokens": 8}


async def test_a_tenants_bad_input_never_ejects_the_model_for_others(kyma) -> None:
    attacker_id, attacker = await kyma.create_account()
    victim_id, victim = await kyma.create_account()
    # 41 requests in a minute: more than the free tier's 25 for one model.
    await kyma.admin("PinTier", admin_service_pb2.PinTierRequest(account_id=victim_id, tier=4))
    await kyma.account_changes_seen()
    await kyma.upstream.control(fail_on_text=POISON)
    before = await kyma.balance(attacker_id)
    stub = pb_grpc.InferenceServiceStub(kyma.channel)
    attacker_grpc = (("authorization", f"Bearer {attacker}"),)

    async def attack_http(http: httpx.AsyncClient) -> list[int]:
        statuses = []
        for _ in range(15):
            reply = await http.post(
                "/v1/chat/completions",
                json=_chat(f"please {POISON}"),
                headers={"authorization": f"Bearer {attacker}"},
            )
            statuses.append(reply.status_code)
            if reply.status_code == 502:
                # The upstream's own reason, and no advice to retry what always fails.
                message = reply.json()["error"]["message"]
                assert "Input should be" in message and "retry" not in message.lower()
        return statuses

    async def attack_grpc() -> list[grpc.StatusCode]:
        codes = []
        for _ in range(15):
            try:
                await stub.CreateChatCompletion(
                    pb.CreateChatCompletionRequest(body=orjson.dumps(_chat(POISON))),
                    metadata=attacker_grpc,
                )
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as error:
                codes.append(error.code())
        return codes

    async def victim_traffic(http: httpx.AsyncClient) -> list[int]:
        statuses = []
        for _ in range(20):
            reply = await http.post(
                "/v1/chat/completions",
                json=_chat("hello"),
                headers={"authorization": f"Bearer {victim}"},
            )
            statuses.append(reply.status_code)
        return statuses

    async with kyma.http() as one, kyma.http() as two:
        # First the attack alone (no one else's success in between to reset anything), then
        # the victim, then both at once.
        attacked, attacked_grpc = await asyncio.gather(attack_http(one), attack_grpc())
        served = await victim_traffic(two)
        more, _, served_during = await asyncio.gather(
            attack_http(one), attack_grpc(), victim_traffic(two)
        )
    assert served == [200] * 20 and served_during == [200] * 20
    attacked += more
    assert set(attacked) <= {502, 503} and 502 in attacked
    assert grpc.StatusCode.OK not in attacked_grpc
    # Not ejected for everyone: only, perhaps, for the account that choked it.
    [status] = [
        s for s in kyma.core.router.status(kyma.core.catalogue.models()) if s.model == "test-model"
    ]
    assert status.state.value == "closed"
    after = await kyma.balance(attacker_id)
    assert after.balance_nanos == before.balance_nanos  # failures cost nothing
    async with kyma.http() as http:
        assert (
            await http.post(
                "/v1/chat/completions",
                json=_chat("still fine"),
                headers={"authorization": f"Bearer {victim}"},
            )
        ).status_code == 200
