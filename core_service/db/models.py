"""Kyma's tables. Schema changes go through Alembic migrations in ./migrations."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from core_service.db.types import UTCDateTime

# Stable constraint names, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    # The address in canonical form (case, provider aliases): one account per person.
    email_canonical: Mapped[str] = mapped_column(String(320), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    # The tier follows total purchases (see ratelimit/tiers.py) unless an admin pins it.
    # Set by an admin to hold the account at a tier whatever it purchased.
    pinned_tier: Mapped[int | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Enforcement: why the account is suspended or banned, and until when (suspensions).
    status_reason: Mapped[str | None] = mapped_column(String(2000), default=None)
    suspended_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    referrals_revoked: Mapped[bool] = mapped_column(default=False)
    # What others sign up with to be referred by this account.
    referral_code: Mapped[str | None] = mapped_column(String(16), unique=True, default=None)
    # Abuse-review signals recorded at sign-up.
    signup_ip: Mapped[str | None] = mapped_column(String(64), default=None)
    signup_fingerprint: Mapped[str | None] = mapped_column(String(200), default=None)
    # The terms of service the account holder accepted (at sign-up, or explicitly later), and
    # the newer version its continued use began under (recorded once, not per request).
    terms_version: Mapped[str | None] = mapped_column(String(32), default=None)
    terms_accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    terms_in_use_version: Mapped[str | None] = mapped_column(String(32), default=None)
    terms_in_use_since: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # Low-balance alert: the threshold, and when the alert for the current crossing went out
    # (None: armed).
    low_balance_threshold_nanos: Mapped[int | None] = mapped_column(BigInteger, default=None)
    low_balance_alerted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)

    __table_args__ = (Index("ix_accounts_low_balance_alerted_at", "low_balance_alerted_at"),)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    name: Mapped[str] = mapped_column(String(100))
    display_prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # Limits its owner gave it: refused after `expires_at`; only the models in
    # `allowed_models` (a JSON list; None = every model). Its spend cap is in KeySpend.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    allowed_models: Mapped[str | None] = mapped_column(Text, default=None)

    __table_args__ = (Index("ix_api_keys_account_id", "account_id"),)


class KeySpend(Base):
    """A key's spend cap and what it spent, per calendar period (UTC day, ISO week, month) and
    in all, with what its open holds set aside. Locked and updated by the hold stores in the
    same transaction as the account's balance row, so a cap is decided as exactly as the
    balance (`billing/hold_store.py`). One row per key, made with the key."""

    __tablename__ = "key_spend"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(32))
    cap_nanos: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # "daily", "weekly", "monthly"; None = the cap counts everything the key ever spent.
    cap_interval: Mapped[str | None] = mapped_column(String(16), default=None)
    held_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    spent_total_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    # Each counter with the first day of the period it counts.
    spent_day_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    spent_day: Mapped[date | None] = mapped_column(Date, default=None)
    spent_week_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    spent_week: Mapped[date | None] = mapped_column(Date, default=None)
    spent_month_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    spent_month: Mapped[date | None] = mapped_column(Date, default=None)


class WebSession(Base):
    """A signed-in browser: only the token's hash is kept. It ends at `expires_at`, after the
    idle timeout since `last_used_at` (written in batches, not per request), or when revoked."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    created_ip: Mapped[str | None] = mapped_column(String(64), default=None)

    __table_args__ = (
        Index("ix_web_sessions_account_id", "account_id"),
        Index("ix_web_sessions_expires_at", "expires_at"),
    )


class LedgerEntry(Base):
    """One transfer of `amount_nanos` from `debit_account` to `credit_account`: the ledger is
    double-entry by construction, append-only by convention (no code updates or deletes rows).

    Ledger accounts are customer account ids, or `system:*` accounts that are the other side
    of every movement (bonuses, purchases, usage revenue, referral rewards, adjustments).
    """

    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    debit_account: Mapped[str] = mapped_column(String(64))
    credit_account: Mapped[str] = mapped_column(String(64))
    amount_nanos: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Who caused it: "system", "stripe", "admin:<name>", a request id.
    actor: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(String(500), default="")
    # The thing it belongs to: a hold id, a Checkout Session id, a referral id.
    reference: Mapped[str | None] = mapped_column(String(200), default=None)

    __table_args__ = (
        CheckConstraint("amount_nanos > 0", name="amount_positive"),
        CheckConstraint("debit_account <> credit_account", name="distinct_sides"),
        Index("ix_ledger_entries_debit_account", "debit_account", "id"),
        Index("ix_ledger_entries_credit_account", "credit_account", "id"),
    )


class Balance(Base):
    """A ledger account's balance, kept in the same transaction as each of its entries so that
    holds can be checked atomically; `kyma admin ledger verify` proves it equals the replay."""

    __tablename__ = "balances"

    ledger_account: Mapped[str] = mapped_column(String(64), primary_key=True)
    balance_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    # Sum of the open holds on this account.
    held_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    total_purchased_nanos: Mapped[int] = mapped_column(BigInteger, default=0)


class CreditHold(Base):
    """The worst-case cost of one request, set aside before it is forwarded. It ends exactly once:
    settled (a usage entry for the actual cost), released, or expired."""

    __tablename__ = "credit_holds"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(32))
    amount_nanos: Mapped[int] = mapped_column(BigInteger)
    request_id: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    charged_nanos: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # The core node that placed it; while that node's lease lives, it alone ends the hold.
    node_id: Mapped[str | None] = mapped_column(String(64), default=None)
    # The usage the node last recorded (a stream: what it had delivered), and its cost: what
    # the hold is settled at if its node dies.
    checkpoint_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    checkpoint_prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    checkpoint_completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    checkpoint_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # When the settlement that came after the hold expired was reconciled (once, charged or not).
    late_settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # The key whose spend (KeySpend) the hold counts in; None for holds placed without one.
    key_id: Mapped[str | None] = mapped_column(String(32), default=None)

    __table_args__ = (
        CheckConstraint("amount_nanos >= 0", name="amount_non_negative"),
        Index("ix_credit_holds_open", "status", "expires_at"),
        Index("ix_credit_holds_account_id", "account_id"),
        Index("ix_credit_holds_node_open", "node_id", "status"),
        Index("ix_credit_holds_ended_at", "ended_at"),
    )


class CoreNode(Base):
    """A running core process. Its heartbeat is renewed every few seconds; a node whose lease
    lapsed is taken for dead and its open holds are settled by the others."""

    __tablename__ = "core_nodes"

    node_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(200), default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AccountEvent(Base):
    """A change that every node must see within seconds: a key revoked, an account suspended,
    banned or reinstated, its tier changed. Nodes follow the feed by id."""

    __tablename__ = "account_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    account_id: Mapped[str | None] = mapped_column(String(32), default=None)
    key_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_account_events_created_at", "created_at"),)


class UsageDaily(Base):
    """Usage per account, model and UTC day, added to in each settlement's transaction."""

    __tablename__ = "usage_daily"

    account_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    # Requests whose usage the upstream did not report and Kyma counted.
    estimated_requests: Mapped[int] = mapped_column(BigInteger, default=0)
    # Of the prompt tokens: read from the upstream's prompt cache, and written to it.
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Of the completion tokens: the model's reasoning.
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class SignupCode(Base):
    """The one-time code of a pending sign-up, one per person (canonical address); a new
    request replaces it. Only its hash is kept."""

    __tablename__ = "signup_codes"

    email_canonical: Mapped[str] = mapped_column(String(320), primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    code_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    failed_attempts: Mapped[int] = mapped_column(default=0)
    referral_code: Mapped[str | None] = mapped_column(String(64), default=None)
    signup_ip: Mapped[str | None] = mapped_column(String(64), default=None)
    signup_fingerprint: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # "signup" or "signin": a code is only good for what it was sent for.
    purpose: Mapped[str] = mapped_column(String(16), default="signup", server_default="signup")


class AccountNotice(Base):
    """A warning an admin gave an account, shown in GET /v1/account."""

    __tablename__ = "account_notices"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    message: Mapped[str] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_account_notices_account_id", "account_id"),)


class AuditEntry(Base):
    """One admin action: who, when, why, on which account."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(40))
    account_id: Mapped[str | None] = mapped_column(String(32), default=None)
    reason: Mapped[str] = mapped_column(String(2000))
    details: Mapped[str] = mapped_column(String(2000), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_audit_log_account_id", "account_id", "id"),)


class Referral(Base):
    """One account brought in by another's referral code. Pending until the referred account
    has used enough tokens; then verified (both rewarded, exactly once) — or rejected when the
    two accounts share sign-up signals or the referrer lost its referral privileges."""

    __tablename__ = "referrals"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    referrer_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    referred_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    flagged: Mapped[bool] = mapped_column(default=False)
    flag_reason: Mapped[str | None] = mapped_column(String(500), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)

    __table_args__ = (
        Index("ix_referrals_referrer_id", "referrer_id"),
        Index("ix_referrals_status", "status"),
    )


class Incident(Base):
    """An incident on the public status page, posted and updated by admins (audited)."""

    __tablename__ = "incidents"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    title: Mapped[str] = mapped_column(String(200))
    # investigating, identified, monitoring, resolved
    status: Mapped[str] = mapped_column(String(16))
    body: Mapped[str] = mapped_column(String(4000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)

    __table_args__ = (Index("ix_incidents_resolved_at", "resolved_at"),)


class ModelOutcome(Base):
    """How a model's requests ended, per UTC minute: answered, or failed for a reason that is
    the service's (its upstreams, or Kyma), summed from every node's counts."""

    __tablename__ = "model_outcomes"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    minute: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    answered: Mapped[int] = mapped_column(BigInteger)
    failed: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_model_outcomes_minute", "minute"),)
