"""Checking that every answer's `usage.cost` is what the ledger charged for it.

`CostRecorder` gives the openai SDK an HTTP transport (`Kyma.client` installs one; httpx2, which
the SDK is built on): it records,
for every successful inference answer, its `x-request-id` and the `usage.cost` it carried — the
unary body's (which must equal its `x-kyma-cost` header) or a stream's final usage chunk's — and
passes every byte through untouched. `check` then compares each with the ledger: the usage
entries of the request's hold (`usage:<hold id>`, plus `usage:<hold id>:late` if one came
late) must add up to exactly the cost the client was shown.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx2
from sqlalchemy import select

from core_service.db.models import CreditHold, LedgerEntry

_PRICED_PATHS = ("/chat/completions", "/completions", "/embeddings")


def _cost_of(event: Any) -> Decimal | None:
    usage = event.get("usage") if isinstance(event, dict) else None
    if isinstance(usage, dict) and isinstance(usage.get("cost"), str):
        return Decimal(usage["cost"])
    return None


class _Sniffed(httpx2.AsyncByteStream):
    """A stream's bytes, unchanged, with the cost of its usage chunk noted on the way."""

    def __init__(self, inner: httpx2.AsyncByteStream, found: dict[str, Decimal], rid: str) -> None:
        self._inner = inner
        self._found = found
        self._rid = rid
        self._buffer = b""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._inner:
            self._buffer += part
            *events, self._buffer = self._buffer.split(b"\n\n")
            for event in events:
                data = event.removeprefix(b"data: ")
                if data and data != b"[DONE]":
                    cost = _cost_of(json.loads(data))
                    if cost is not None:
                        assert self._rid not in self._found, "two usage chunks with a cost"
                        self._found[self._rid] = cost
            yield part

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Recording(httpx2.AsyncBaseTransport):
    """One client's transport, recording into its recorder."""

    def __init__(self, costs: dict[str, Decimal]) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self.costs = costs

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        rid = response.headers.get("x-request-id", "")
        if response.status_code != 200 or not request.url.path.endswith(_PRICED_PATHS):
            return response
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            assert "x-kyma-cost" not in response.headers  # not known before the stream ends
            assert isinstance(response.stream, httpx2.AsyncByteStream)
            sniffed = _Sniffed(response.stream, self.costs, rid)
            return httpx2.Response(
                200, headers=response.headers, stream=sniffed, extensions=response.extensions
            )
        body = await response.aread()
        cost = _cost_of(json.loads(body))
        assert cost is not None, "a unary answer without usage.cost"
        assert Decimal(response.headers["x-kyma-cost"]) == cost, "x-kyma-cost ≠ usage.cost"
        self.costs[rid] = cost
        return httpx2.Response(
            200, headers=response.headers, content=body, extensions=response.extensions
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class CostRecorder:
    def __init__(self) -> None:
        # request id → the cost its answer showed.
        self.costs: dict[str, Decimal] = {}

    def transport(self) -> httpx2.AsyncBaseTransport:
        """A transport for one client (closed with it), recording here."""
        return _Recording(self.costs)

    async def check(self, kyma: Any) -> int:
        """Compare every recorded cost with the ledger (after settlement); forget them. Returns
        how many requests were checked."""
        recorded = dict(self.costs)
        self.costs.clear()
        if not recorded:
            return 0
        await kyma.settled()
        async with kyma.core.storage.reads.connect() as conn:
            holds = (
                await conn.execute(
                    select(CreditHold.id, CreditHold.request_id).where(
                        CreditHold.request_id.in_(list(recorded))
                    )
                )
            ).all()
            hold_of = {request_id: hold_id for hold_id, request_id in holds}
            keys = [f"usage:{h}{late}" for h in hold_of.values() for late in ("", ":late")]
            entries = (
                await conn.execute(
                    select(LedgerEntry.idempotency_key, LedgerEntry.amount_nanos).where(
                        LedgerEntry.idempotency_key.in_(keys)
                    )
                )
            ).all()
        charged: dict[str, int] = {}
        for key, amount in entries:
            hold_id = key.split(":")[1]
            charged[hold_id] = charged.get(hold_id, 0) + amount
        wrong = {
            rid: (str(cost), charged.get(hold_of.get(rid, ""), 0))
            for rid, cost in recorded.items()
            if rid not in hold_of or int(cost * 10**9) != charged.get(hold_of[rid], 0)
        }
        assert not wrong, f"usage.cost ≠ ledger (request: (shown, charged nanos)): {wrong}"
        return len(recorded)
