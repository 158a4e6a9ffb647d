"""Where holds live: every request's writes (place a hold before forwarding; settle, release or
checkpoint it after), committed a batch at a time by the one writer of each database
(`billing/writer.py`) through a `HoldStore`, one implementation per backend.

A batch is decided as one transaction:

1. the balance rows of every account the batch touches are locked (in a fixed order, so two
   nodes' batches cannot deadlock);
2. holds that end (settled at their cost, released at nothing, or expired at their last
   checkpoint) end — only those still open, so each hold ends exactly once;
3. checkpoints are recorded on holds still open;
3b. a settlement that finds its hold already expired (its node was taken for dead, and
   another settled it at its last checkpoint) is reconciled: the difference to the actual
   cost (within the hold) is charged as a second usage entry (`usage:<hold id>:late`), as
   far as the available balance covers it, once per hold — the hold has ended once, and
   its charge ends right, or as near as never going below zero allows;
4. new holds are decided per account, in the order they were asked for, against the balance
   as steps 2 and 3b left it: each is placed if the available balance (balance − held)
   covers it, so the balance never goes below zero, however many requests of one account
   share a batch — and, for a hold placed through a key with a spend cap, only if the cap's
   room (cap − spent in its current period − held by the key) covers it too;
5. each account's balance row is updated once, with every change of the batch, and so is
   each key's spend row (`key_spend.py`: what its holds set aside and what it was charged);
6. usage entries (one per charged hold, idempotency key `usage:<hold id>`) and daily usage go
   in with one multi-row statement each.

The key rows are locked right after the balance rows, both in a fixed order, in the same
statement, so a cap is as exact as the balance across nodes and under any concurrency. Each
request still gets its own hold row and its own answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any, Protocol

from core_service.billing.key_spend import KeySpendState

USAGE_REVENUE = "system:usage_revenue"


@dataclass(frozen=True)
class NewHold:
    hold_id: str
    account_id: str
    amount_nanos: int
    request_id: str
    model: str
    created_at: datetime
    expires_at: datetime
    node_id: str | None = None
    # The key it was asked through: its spend row counts the hold (and decides it, if capped).
    key_id: str | None = None


@dataclass(frozen=True)
class Refusal:
    """Why a hold was not placed: the available balance that fell short, or (`key_cap`) the
    room the key's spend cap left."""

    available_nanos: int
    key_cap: bool = False


@dataclass(frozen=True)
class Settlement:
    """What a request used, to settle its hold with."""

    cost_nanos: int
    prompt_tokens: int
    completion_tokens: int
    estimated: bool
    # Of the prompt: cache reads and cache writes; of the completion: reasoning.
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


class Ending(StrEnum):
    SETTLED = "settled"  # charged min(cost, hold)
    RELEASED = "released"  # charged nothing: the request failed before any usage
    EXPIRED = "expired"  # its node died: charged min(last checkpoint, hold)


@dataclass(frozen=True)
class EndOrder:
    hold_id: str
    account_id: str
    ending: Ending
    now: datetime
    settlement: Settlement | None = None  # for SETTLED
    # The hold's key, so that its spend row is locked with the balance (the hold row decides).
    key_id: str | None = None

    @property
    def day(self) -> date:
        return self.now.date()


@dataclass(frozen=True)
class Checkpoint:
    """The usage an open hold's request had reached (a stream: what it delivered so far)."""

    hold_id: str
    account_id: str
    settlement: Settlement
    now: datetime


@dataclass
class Batch:
    places: list[NewHold] = field(default_factory=list)
    ends: list[EndOrder] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.places) + len(self.ends) + len(self.checkpoints)

    def accounts(self) -> list[str]:
        """Every account the batch touches, sorted: the order their rows are locked in."""
        found = {h.account_id for h in self.places} | {e.account_id for e in self.ends}
        return sorted(found)

    def keys(self) -> list[str]:
        """Every key the batch touches, sorted: the order their spend rows are locked in."""
        found = {h.key_id for h in self.places} | {e.key_id for e in self.ends}
        return sorted(key for key in found if key is not None)


@dataclass
class BatchOutcome:
    # hold id → None when placed, else why not.
    placed: dict[str, Refusal | None] = field(default_factory=dict)
    # hold id → what this batch charged it (ending it, or correcting a late settlement);
    # absent: it was not open, and nothing more was owed.
    ended: dict[str, int] = field(default_factory=dict)


def usage_reason(model: str, settlement: Settlement) -> str:
    return (
        f"{model}: {settlement.prompt_tokens} prompt + {settlement.completion_tokens} completion "
        "tokens" + (" (estimated)" if settlement.estimated else "")
    )


@dataclass
class Ended:
    """A hold the batch ended, as its row said."""

    hold_id: str
    account_id: str
    ending: Ending
    amount_nanos: int
    charged_nanos: int
    model: str
    request_id: str
    prompt_tokens: int
    completion_tokens: int
    estimated: bool
    now: datetime
    # A late settlement's correction of an expired hold: a second entry, not a second end.
    late: bool = False
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    key_id: str | None = None

    @property
    def entry_key(self) -> str:
        return f"usage:{self.hold_id}:late" if self.late else f"usage:{self.hold_id}"


@dataclass(frozen=True)
class Expired:
    """A hold a settlement arrived for after it had expired, as its row says."""

    hold_id: str
    account_id: str
    amount_nanos: int
    charged_nanos: int
    model: str
    request_id: str
    checkpoint_prompt_tokens: int
    checkpoint_completion_tokens: int
    key_id: str | None = None


def tokens_at_end(
    order: EndOrder, checkpoint_prompt_tokens: int, checkpoint_completion_tokens: int
) -> dict[str, Any]:
    """The tokens an ended hold is recorded with (the token fields of `Ended`): a settled
    one's usage; an expired one's last checkpoint, estimated (checkpoints keep no cached or
    reasoning parts: its late settlement, if one comes, brings them); a released one's none."""
    usage = order.settlement
    if order.ending is Ending.EXPIRED:
        return {
            "prompt_tokens": int(checkpoint_prompt_tokens),
            "completion_tokens": int(checkpoint_completion_tokens),
            "estimated": True,
        }
    if usage is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "estimated": False}
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "estimated": usage.estimated,
        "cached_tokens": usage.cached_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
    }


def after_ends(available: dict[str, int], ended: list[Ended]) -> dict[str, int]:
    """The available balance per account once the batch's ends are applied."""
    left = dict(available)
    for end in ended:
        left[end.account_id] = left.get(end.account_id, 0) + end.amount_nanos - end.charged_nanos
    return left


def late_settlements(batch: Batch, ended: list[Ended]) -> list[EndOrder]:
    """The batch's settlements whose hold was no longer open."""
    done = {end.hold_id for end in ended}
    return [o for o in batch.ends if o.ending is Ending.SETTLED and o.hold_id not in done]


def reconcile_late(
    orders: list[EndOrder], expired: list[Expired], left: dict[str, int]
) -> list[Ended]:
    """Step 3b: the extra charge of each late settlement, taken from `left` (updated)."""
    by_id = {row.hold_id: row for row in expired}
    corrections = []
    for order in orders:
        row = by_id.pop(order.hold_id, None)
        if row is None or order.settlement is None:
            continue
        usage = order.settlement
        owed = min(max(usage.cost_nanos, 0), row.amount_nanos) - row.charged_nanos
        extra = min(owed, max(left.get(row.account_id, 0), 0))
        if extra <= 0:
            continue
        left[row.account_id] = left.get(row.account_id, 0) - extra
        corrections.append(
            Ended(
                hold_id=row.hold_id,
                account_id=row.account_id,
                ending=Ending.SETTLED,
                amount_nanos=0,  # the hold is no longer held
                charged_nanos=extra,
                model=row.model,
                request_id=row.request_id,
                prompt_tokens=max(usage.prompt_tokens - row.checkpoint_prompt_tokens, 0),
                completion_tokens=max(
                    usage.completion_tokens - row.checkpoint_completion_tokens, 0
                ),
                estimated=usage.estimated,
                now=order.now,
                late=True,
                # The expired end recorded none of the parts: the correction brings them all.
                cached_tokens=usage.cached_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                reasoning_tokens=usage.reasoning_tokens,
                key_id=row.key_id,
            )
        )
    return corrections


def keys_after_ends(keys: dict[str, KeySpendState], ended: list[Ended]) -> set[str]:
    """Steps 2 and 3b for the keys: each ended hold's amount is no longer held by its key, and
    what it was charged counts as spent in the period of its end. Returns the keys changed."""
    changed = set()
    for end in ended:
        state = keys.get(end.key_id) if end.key_id is not None else None
        if state is None:
            continue
        state.held_nanos -= end.amount_nanos
        state.charge(end.charged_nanos, end.now)
        changed.add(state.key_id)
    return changed


def decide_places(
    places: list[NewHold], left: dict[str, int], keys: dict[str, KeySpendState] | None = None
) -> tuple[dict[str, Refusal | None], dict[str, int]]:
    """Step 4: which new holds fit, account by account in order, against the available
    balance `left` after the batch's ends and corrections, and against the room of their key's
    cap (`keys`, after the ends; updated with what is placed). Returns (the answer per hold,
    the amount placed per account)."""
    left = dict(left)
    keys = keys or {}
    answers: dict[str, Refusal | None] = {}
    placed: dict[str, int] = {}
    for hold in places:
        room = left.get(hold.account_id)
        key = keys.get(hold.key_id) if hold.key_id is not None else None
        if key is not None:
            key.roll(hold.created_at)
        cap_room = key.room() if key is not None else None
        if room is None or hold.amount_nanos > room:
            answers[hold.hold_id] = Refusal(max(room or 0, 0))
        elif cap_room is not None and hold.amount_nanos > cap_room:
            answers[hold.hold_id] = Refusal(max(cap_room, 0), key_cap=True)
        else:
            answers[hold.hold_id] = None
            left[hold.account_id] = room - hold.amount_nanos
            placed[hold.account_id] = placed.get(hold.account_id, 0) + hold.amount_nanos
            if key is not None:
                key.held_nanos += hold.amount_nanos
    return answers, placed


def balance_deltas(ended: list[Ended], placed: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Step 5: per account, (change of balance, change of held)."""
    deltas: dict[str, tuple[int, int]] = {
        account: (0, amount) for account, amount in placed.items()
    }
    for end in ended:
        balance, held = deltas.get(end.account_id, (0, 0))
        deltas[end.account_id] = (balance - end.charged_nanos, held - end.amount_nanos)
    return {account: delta for account, delta in deltas.items() if delta != (0, 0)}


@dataclass(frozen=True)
class DailyUsage:
    account_id: str
    day: date
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_nanos: int
    estimated_requests: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


def daily_usage(ended: list[Ended]) -> list[DailyUsage]:
    """Step 6: the usage of the settled holds, and of the expired ones that recorded any, one row
    per account, day and model. A released hold used nothing and counts no request."""
    rows: dict[tuple[str, date, str], list[int]] = {}
    for end in ended:
        if end.ending is Ending.RELEASED:
            continue
        if end.ending is Ending.EXPIRED and not (end.prompt_tokens or end.completion_tokens):
            continue
        request = 0 if end.late else 1  # a correction adds cost and tokens, not a request
        row = rows.setdefault((end.account_id, end.now.date(), end.model), [0] * 8)
        row[0] += request
        row[1] += end.prompt_tokens
        row[2] += end.completion_tokens
        row[3] += end.charged_nanos
        row[4] += 1 if end.estimated else 0
        row[5] += end.cached_tokens
        row[6] += end.cache_write_tokens
        row[7] += end.reasoning_tokens
    return [
        DailyUsage(account, day, model, *values) for (account, day, model), values in rows.items()
    ]


class HoldStore(Protocol):
    async def commit(self, batch: Batch) -> BatchOutcome:
        """Decide and write the whole batch in one transaction (see the module docstring).
        Raises when the transaction did not commit (then none of it happened, or — if the
        connection broke during COMMIT — it is unknown whether it did)."""
        ...

    async def close(self) -> None: ...
