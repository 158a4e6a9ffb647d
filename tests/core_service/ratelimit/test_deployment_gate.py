"""`DeploymentGate`: a deployment's limits split over shard counters (no hot key), never more
than the deployment's limits in all, on the in-process store and a fake clock."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

from core_service.catalog import Deployment, DeploymentLimits, Model
from core_service.ratelimit.limiter import MIN_SHARD_TPM, DeploymentGate, Ticket
from core_service.ratelimit.local_store import InProcessRateLimitStore
from core_service.ratelimit.redis_store import hash_tag
from core_service.tasks import BackgroundTasks


class FakeClock:
    def __init__(self) -> None:
        self.ms = 1_800_000_000_250

    def now(self) -> datetime:
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=self.ms)

    def monotonic(self) -> float:
        return self.ms / 1000


def model_with(**limits: int) -> tuple[Model, Deployment]:
    deployment = Deployment(
        name="d", base_url="http://127.0.0.1:1", model="up", limits=DeploymentLimits(**limits)
    )
    return Model(name="m/x", deployments=(deployment,)), deployment


async def test_shards_add_up_to_the_deployment_limits() -> None:
    clock = FakeClock()
    store = InProcessRateLimitStore(clock)
    tasks = BackgroundTasks()
    gate = DeploymentGate(store, tasks, rng=random.Random(7))
    model, deployment = model_with(rpm=20, max_concurrent=10)
    assert gate.shard_count(deployment) == 8

    entered = await asyncio.gather(*(gate.enter(model, deployment, 5) for _ in range(100)))
    tickets = [t for t in entered if isinstance(t, Ticket)]
    # Never more than max_concurrent at once; some room may be left in shards never drawn.
    assert 1 <= len(tickets) <= 10
    assert all(isinstance(t, int) and t >= 1 for t in entered if not isinstance(t, Ticket))
    # Each shard's counters are in one slot of their own: no key is shared by every request.
    tags = {hash_tag(t.slot_key) for t in tickets}
    assert len(tags) > 1 and all(tag.startswith("dep:") for tag in tags)
    assert all(
        {hash_tag(limit.key) for limit in t.counted} == {hash_tag(t.slot_key)} for t in tickets
    )

    for ticket in tickets:
        gate.leave(model, ticket, 5)
    await tasks.drain(5)
    again = await asyncio.gather(*(gate.enter(model, deployment, 5) for _ in range(100)))
    admitted = len(tickets) + sum(isinstance(t, Ticket) for t in again)
    assert admitted <= 20  # the RPM in all, over every shard


async def test_small_limits_use_fewer_shards() -> None:
    gate = DeploymentGate(InProcessRateLimitStore(FakeClock()), BackgroundTasks())
    assert gate.shard_count(model_with(rpm=2)[1]) == 2
    assert gate.shard_count(model_with(max_concurrent=1, rpm=100)[1]) == 1
    assert gate.shard_count(model_with(tpm=MIN_SHARD_TPM * 3)[1]) == 3
    assert gate.shard_count(model_with(tpm=1000)[1]) == 1
    assert gate.shard_count(model_with()[1]) == 8


async def test_a_deployment_with_two_shards_admits_its_whole_rpm() -> None:
    """With at most two shards, a request tries them both: no room is left unused."""
    store = InProcessRateLimitStore(FakeClock())
    gate = DeploymentGate(store, BackgroundTasks(), rng=random.Random(1))
    model, deployment = model_with(rpm=2)
    entered = [await gate.enter(model, deployment, 1) for _ in range(4)]
    assert [isinstance(t, Ticket) for t in entered] == [True, True, False, False]
