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

    __table_args__ = (Index("ix_api_keys_account_id", "account_id"),)


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


class CheckoutSession(Base):
    """A Stripe Checkout Session Kyma created: the only kind of session a webhook may credit,
    and only to this account, at this amount and currency (recorded before its URL is given)."""

    __tablename__ = "checkout_sessions"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # Stripe's cs_… id
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_checkout_sessions_account_id", "account_id"),)


class IgnoredPayment(Base):
    """A signed, paid Checkout Session event that credited nothing, and why: one Kyma did not
    create, or one that does not match what Kyma created. One row per Stripe event."""

    __tablename__ = "ignored_payments"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    event_id: Mapped[str] = mapped_column(String(255), unique=True)
    event_type: Mapped[str] = mapped_column(String(100))
    session_id: Mapped[str | None] = mapped_column(String(255), default=None)
    # The account the session names, as it names it (not necessarily a Kyma account).
    account_id: Mapped[str | None] = mapped_column(String(255), default=None)
    amount_total: Mapped[int | None] = mapped_column(BigInteger, default=None)
    currency: Mapped[str | None] = mapped_column(String(16), default=None)
    reason: Mapped[str] = mapped_column(String(500))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
