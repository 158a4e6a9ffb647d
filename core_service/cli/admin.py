"""`kyma admin …`: operators' commands, calling the core's AdminService through the generated
stubs with the admin token (KYMA_ADMIN_TOKEN, or the token file the core wrote in data_dir)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import json_format

from core_service.cli.incidents import add_incident_commands
from core_service.settings import Settings, read_settings
from kyma.accounting.v1 import accounting_service_pb2 as accounting_pb
from kyma.admin.v1 import admin_service_pb2 as pb
from kyma.admin.v1 import admin_service_pb2_grpc as pb_grpc


class _Admin:
    def __init__(self, settings: Settings) -> None:
        token = (
            settings.admin_token.get_secret_value()
            if settings.admin_token is not None
            else _read_token_file(settings)
        )
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._channel = grpc.insecure_channel(settings.core_target)
        self.stub = pb_grpc.AdminServiceStub(self._channel)

    def call(self, method: Callable[..., Any], request: Any) -> Any:
        return method(request, metadata=self._metadata, timeout=30)


def _read_token_file(settings: Settings) -> str:
    try:
        return settings.admin_token_file.read_text().strip()
    except OSError:
        raise SystemExit(
            f"kyma admin: no admin token. Set KYMA_ADMIN_TOKEN, or run where the core's data "
            f"directory is ({settings.admin_token_file} is missing)."
        ) from None


def _print(message: Any, as_json: bool, text: str) -> None:
    if as_json:
        data = json_format.MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(text)


def _accounts_create(args: argparse.Namespace) -> int:
    admin = _Admin(read_settings())
    reply = admin.call(
        admin.stub.CreateAccount, pb.CreateAccountRequest(email=args.email, key_name=args.key_name)
    )
    _print(
        reply,
        args.json,
        f"account {reply.account.id} <{reply.account.email}>\n"
        f"api key (shown once): {reply.api_key_secret}",
    )
    return 0


def _credits_adjust(args: argparse.Namespace) -> int:
    admin = _Admin(read_settings())
    reply = admin.call(
        admin.stub.AdjustCredits,
        pb.AdjustCreditsRequest(
            account_id=args.account_id,
            amount_usd=args.amount_usd,
            reason=args.reason,
            idempotency_key=args.idempotency_key or "",
            actor=args.actor,
        ),
    )
    note = "" if reply.created else " (already applied earlier with this idempotency key)"
    _print(
        reply,
        args.json,
        f"entry {reply.entry.id}: {reply.entry.amount.usd} USD{note}\n"
        f"balance {reply.balance.balance.usd} USD, available {reply.balance.available.usd} USD",
    )
    return 0


def _ledger_verify(args: argparse.Namespace) -> int:
    admin = _Admin(read_settings())
    reply = admin.call(admin.stub.VerifyLedger, pb.VerifyLedgerRequest())
    summary = (
        f"checked {reply.entries_checked} entries, {reply.accounts_checked} accounts, "
        f"{reply.holds_checked} holds: " + ("OK" if reply.ok else f"{len(reply.problems)} problems")
    )
    _print(reply, args.json, "\n".join([summary, *reply.problems]))
    return 0 if reply.ok else 2


def _limits_show(args: argparse.Namespace) -> int:
    admin = _Admin(read_settings())
    reply = admin.call(
        admin.stub.GetAccountLimits,
        pb.GetAccountLimitsRequest(account_id=args.account_id, model=args.model or ""),
    )
    limits, status = reply.limits, reply.status
    pinned = " (pinned)" if limits.pinned else ""
    text = (
        f"tier {limits.tier}{pinned}: {limits.rpm} RPM, {limits.model_rpm} per model, {limits.tpm} TPM"
        f" (total purchased {reply.total_purchased.usd} USD)\n"
        f"requests: {status.remaining_requests}/{status.limit_requests} left, "
        f"full again in {status.reset_requests_ms / 1000:.0f}s"
        + (f" (counting {args.model})" if args.model else "")
        + f"\ntokens: {status.remaining_tokens}/{status.limit_tokens} left, "
        f"full again in {status.reset_tokens_ms / 1000:.0f}s\n"
        f"counted {'across nodes (Redis)' if reply.shared else 'on this node only'}"
    )
    _print(reply, args.json, text)
    return 0


def _limits_pin(args: argparse.Namespace) -> int:
    admin = _Admin(read_settings())
    request = pb.PinTierRequest(account_id=args.account_id)
    if args.tier != "none":
        if not args.tier.isdigit():
            raise SystemExit("kyma admin: the tier is a number, or 'none' to follow purchases")
        request.tier = int(args.tier)
    reply = admin.call(admin.stub.PinTier, request)
    limits = reply.limits
    state = "pinned to" if limits.pinned else "follows purchases, now"
    _print(
        reply,
        args.json,
        f"{args.account_id} {state} tier {limits.tier}: {limits.rpm} RPM, {limits.model_rpm} per model, {limits.tpm} TPM",
    )
    return 0


def _justification(args: argparse.Namespace) -> pb.Justification:
    return pb.Justification(actor=args.actor, reason=args.reason)


def _enforce(args: argparse.Namespace) -> int:
    """warn, reset-credits, suspend, ban, unban, revoke-referrals."""
    admin = _Admin(read_settings())
    why = _justification(args)
    action = args.action
    if action == "warn":
        reply = admin.call(
            admin.stub.WarnAccount,
            pb.WarnAccountRequest(
                account_id=args.account_id, message=args.message, justification=why
            ),
        )
        text = f"warned {args.account_id}"
    elif action == "reset-credits":
        reply = admin.call(
            admin.stub.ResetCredits,
            pb.ResetCreditsRequest(account_id=args.account_id, justification=why),
        )
        text = f"credits of {args.account_id} reset: balance {reply.balance.balance.usd} USD, available {reply.balance.available.usd} USD"
    elif action == "suspend":
        until = _parse_time(args.until, direction=1)
        request = pb.SuspendAccountRequest(account_id=args.account_id, justification=why)
        request.until.FromDatetime(until)
        reply = admin.call(admin.stub.SuspendAccount, request)
        text = f"suspended {args.account_id} until {until.isoformat()}"
    elif action == "ban":
        reply = admin.call(
            admin.stub.BanAccount,
            pb.BanAccountRequest(account_id=args.account_id, justification=why),
        )
        text = f"banned {args.account_id}"
    elif action == "unban":
        reply = admin.call(
            admin.stub.ReinstateAccount,
            pb.ReinstateAccountRequest(account_id=args.account_id, justification=why),
        )
        text = f"reinstated {args.account_id}"
    else:
        reply = admin.call(
            admin.stub.RevokeReferrals,
            pb.RevokeReferralsRequest(account_id=args.account_id, justification=why),
        )
        text = f"referral privileges of {args.account_id} revoked"
    _print(reply, args.json, f"{text} (audit entry {reply.audit.id})")
    return 0


def _parse_time(text: str, *, direction: int) -> datetime:
    """An ISO 8601 time (UTC when no zone is given), or a duration from now (30m, 12h, 7d),
    counted forward (`direction` 1) or back (-1)."""
    units = {"m": 60, "h": 3600, "d": 86400}
    if text[:-1].isdigit() and text[-1:] in units:
        seconds = int(text[:-1]) * units[text[-1]]
        return datetime.now(UTC) + direction * timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(
            "kyma admin: a time is ISO (2026-12-01T00:00Z) or a duration (30m, 12h, 7d)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


_STATUS_FILTER = {
    "active": accounting_pb.ACCOUNT_STATUS_ACTIVE,
    "suspended": accounting_pb.ACCOUNT_STATUS_SUSPENDED,
    "banned": accounting_pb.ACCOUNT_STATUS_BANNED,
}


def _accounts_list(args: argparse.Namespace) -> int:
    admin = _Admin(read_settings())
    reply = admin.call(
        admin.stub.ListAccounts,
        pb.ListAccountsRequest(
            status=_STATUS_FILTER.get(args.status or "", accounting_pb.ACCOUNT_STATUS_UNSPECIFIED),
            shared_signals=args.shared_signals,
            page_size=args.limit,
            after_id=args.after or "",
        ),
    )
    lines = [
        f"{s.account.id}  {s.account.email}  {_status_name(s.account.status)}"
        + (f"  shares signals with {s.sharing_signals}" if s.sharing_signals else "")
        for s in reply.accounts
    ]
    _print(reply, args.json, "\n".join(lines) or "no accounts")
    return 0


def _status_name(value: int) -> str:
    return {1: "active", 2: "suspended", 3: "banned"}.get(value, "unknown")


def _accounts_show(args: argparse.Namespace) -> int:
    admin = _Admin(read_settings())
    reply = admin.call(
        admin.stub.GetAccountDetails, pb.GetAccountDetailsRequest(account_id=args.account_id)
    )
    account = reply.summary.account
    lines = [
        f"{account.id} <{account.email}> {_status_name(account.status)}"
        + (f" ({account.status_reason})" if account.status_reason else ""),
        f"tier {reply.limits.tier}; balance {reply.balance.balance.usd} USD, available {reply.balance.available.usd} USD",
        f"sign-up ip {reply.summary.signup_ip or '-'}, fingerprint {reply.summary.signup_fingerprint or '-'}",
        "keys: "
        + (
            ", ".join(
                f"{k.display_prefix}… {k.name}{' (revoked)' if k.HasField('revoked_at') else ''}"
                for k in reply.keys
            )
            or "none"
        ),
        *(f"notice: {n.message}" for n in reply.notices),
        *(f"shares signals with {r.account.id} <{r.account.email}>" for r in reply.related),
    ]
    _print(reply, args.json, "\n".join(lines))
    return 0


def _audit(args: argparse.Namespace) -> int:
    admin = _Admin(read_settings())
    reply = admin.call(
        admin.stub.ListAuditEntries,
        pb.ListAuditEntriesRequest(account_id=args.account or "", page_size=args.limit),
    )
    lines = [
        f"{e.id}  {e.created_at.ToDatetime(tzinfo=UTC).isoformat()}  {e.actor}  {e.action}  {e.account_id}  {e.reason}"
        + (f"  [{e.details}]" if e.details else "")
        for e in reply.entries
    ]
    _print(reply, args.json, "\n".join(lines) or "no audit entries")
    return 0


def _models_status(args: argparse.Namespace) -> int:
    admin = _Admin(read_settings())
    reply = admin.call(admin.stub.ListDeploymentStatus, pb.ListDeploymentStatusRequest())
    states = {1: "closed", 2: "OPEN", 3: "half-open"}
    lines = [
        f"{d.model:<28} {d.deployment:<20} {states.get(d.state, '?'):<9} in flight {d.in_flight:<4} "
        f"{d.latency_ms:7.1f} ms  {d.failures}/{d.requests} failed"
        + (f"  retry in {d.retry_in_seconds:.0f}s" if d.retry_in_seconds else "")
        + (f"  last error: {d.last_error}" if d.last_error else "")
        for d in reply.deployments
    ]
    _print(reply, args.json, "\n".join(lines) or "no deployments")
    return 0


def _models_reload(args: argparse.Namespace) -> int:
    admin = _Admin(read_settings())
    reply = admin.call(admin.stub.ReloadCatalog, pb.ReloadCatalogRequest())
    _print(reply, args.json, f"catalogue reloaded: {', '.join(reply.models)}")
    return 0


_REFERRAL_STATUSES = {
    "pending": accounting_pb.REFERRAL_STATUS_PENDING,
    "under_review": accounting_pb.REFERRAL_STATUS_UNDER_REVIEW,
    "verified": accounting_pb.REFERRAL_STATUS_VERIFIED,
    "rejected": accounting_pb.REFERRAL_STATUS_REJECTED,
}
_REFERRAL_STATUS_NAMES = {value: name for name, value in _REFERRAL_STATUSES.items()}


def _referral_line(r: accounting_pb.Referral) -> str:
    return (
        f"{r.id}  {r.referrer_id} -> {r.referred_id} <{r.referred_email}>  "
        f"{_REFERRAL_STATUS_NAMES.get(r.status, '?')}  {r.tokens_used}/{r.tokens_required} tokens"
        + (f"  FLAGGED: {r.flag_reason}" if r.flagged else "")
    )


def _referrals_list(args: argparse.Namespace) -> int:
    admin = _Admin(read_settings())
    reply = admin.call(
        admin.stub.ListAllReferrals,
        pb.ListAllReferralsRequest(
            flagged_only=args.flagged,
            page_size=args.limit,
            status=_REFERRAL_STATUSES.get(
                args.status or "", accounting_pb.REFERRAL_STATUS_UNSPECIFIED
            ),
        ),
    )
    lines = [_referral_line(r) for r in reply.referrals]
    _print(reply, args.json, "\n".join(lines) or "no referrals")
    return 0


def _referrals_review(args: argparse.Namespace) -> int:
    admin = _Admin(read_settings())
    decision = (
        pb.REFERRAL_DECISION_APPROVE if args.action == "approve" else pb.REFERRAL_DECISION_REJECT
    )
    reply = admin.call(
        admin.stub.ReviewReferral,
        pb.ReviewReferralRequest(
            referral_id=args.referral_id, decision=decision, justification=_justification(args)
        ),
    )
    verb = "approved" if args.action == "approve" else "rejected"
    _print(
        reply,
        args.json,
        f"{verb} {args.referral_id} (audit entry {reply.audit.id}); now: "
        + _referral_line(reply.referral),
    )
    return 0


def _payments_ignored(args: argparse.Namespace) -> int:
    admin = _Admin(read_settings())
    reply = admin.call(
        admin.stub.ListIgnoredPayments, pb.ListIgnoredPaymentsRequest(page_size=args.limit)
    )
    lines = [
        f"{p.received_at.ToDatetime(tzinfo=UTC).isoformat()}  {p.event_id} ({p.event_type})  "
        f"session {p.session_id or '-'}  account {p.account_id or '-'}  "
        f"{p.amount_total if p.HasField('amount_total') else '-'} {p.currency or '-'}: {p.reason}"
        for p in reply.payments
    ]
    _print(reply, args.json, "\n".join(lines) or "no ignored payments")
    return 0


def _logs_list(args: argparse.Namespace) -> int:
    admin = _Admin(read_settings())
    request = pb.ListRequestLogsRequest(
        account_id=args.account or "", request_id=args.request_id or "", limit=args.limit
    )
    if args.since:
        request.since.FromDatetime(_parse_time(args.since, direction=-1))
    if args.until:
        request.until.FromDatetime(_parse_time(args.until, direction=-1))
    reply = admin.call(admin.stub.ListRequestLogs, request)
    lines = [
        f"{e.created_at.ToDatetime(tzinfo=UTC).isoformat()}  {e.request_id}  {e.account_id}  {e.model}"
        f"@{e.deployment or '-'}  {e.status}  {e.latency_ms:.0f} ms  {e.prompt_tokens}+{e.completion_tokens} tok"
        f"  {e.cost.usd} USD"
        + (
            f"\n  request:  {e.request_body[:500]}\n  response: {e.response_body[:500]}"
            if args.content
            else ""
        )
        for e in reply.logs
    ]
    _print(reply, args.json, "\n".join(lines) or "no request logs")
    return 0


def _logs_purge(args: argparse.Namespace) -> int:
    admin = _Admin(read_settings())
    reply = admin.call(
        admin.stub.PurgeRequestLogs, pb.PurgeRequestLogsRequest(dry_run=args.dry_run)
    )
    verb = "would remove" if args.dry_run else "removed"
    cutoff = reply.cutoff.ToDatetime(tzinfo=UTC).isoformat()
    partitions = f", partitions {', '.join(reply.partitions)}" if reply.partitions else ""
    _print(reply, args.json, f"{verb} {reply.rows} request logs older than {cutoff}{partitions}")
    return 0


def _run(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except grpc.RpcError as error:
            print(f"kyma admin: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1

    return run


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    admin = commands.add_parser("admin", help="operators' commands (need the admin token)")
    groups = admin.add_subparsers(dest="group", required=True)

    accounts = groups.add_parser("accounts", help="accounts and their keys")
    account_commands = accounts.add_subparsers(dest="action", required=True)
    create = account_commands.add_parser("create", help="create an account and its first key")
    create.add_argument("email")
    create.add_argument("--key-name", default="default")
    create.add_argument("--json", action="store_true", help="print JSON for scripts")
    create.set_defaults(run=_run(_accounts_create))

    def enforcement(name: str, help_text: str) -> argparse.ArgumentParser:
        command = account_commands.add_parser(name, help=help_text)
        command.add_argument("account_id")
        command.add_argument("--reason", required=True, help="why (recorded in the audit log)")
        command.add_argument(
            "--actor", default=os.environ.get("USER", "admin"), help="who is acting"
        )
        command.add_argument("--json", action="store_true")
        command.set_defaults(run=_run(_enforce))
        return command

    enforcement("warn", "show the account a warning").add_argument("--message", required=True)
    enforcement("reset-credits", "take the available balance to zero (a ledger entry)")
    enforcement("suspend", "refuse the account's requests until a time").add_argument(
        "--until", required=True, help="ISO time, or a duration: 30m, 12h, 7d"
    )
    enforcement("ban", "refuse the account's requests for good")
    enforcement("unban", "lift a suspension or a ban")
    enforcement("revoke-referrals", "the account earns no more referral rewards")

    listing = account_commands.add_parser("list", help="accounts, newest first")
    listing.add_argument("--status", choices=sorted(_STATUS_FILTER))
    listing.add_argument(
        "--shared-signals",
        action="store_true",
        help="only accounts sharing a sign-up IP or fingerprint",
    )
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--after", help="page on after this account id")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_run(_accounts_list))
    show = account_commands.add_parser(
        "show", help="one account: balance, keys, notices, related accounts"
    )
    show.add_argument("account_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=_run(_accounts_show))

    models = groups.add_parser("models", help="the model catalogue and its deployments")
    model_commands = models.add_subparsers(dest="action", required=True)
    status = model_commands.add_parser(
        "status", help="breaker state, load and latency of every deployment (this node)"
    )
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=_run(_models_status))
    reload = model_commands.add_parser(
        "reload", help="read the catalogue file again (a bad file changes nothing)"
    )
    reload.add_argument("--json", action="store_true")
    reload.set_defaults(run=_run(_models_reload))

    referrals = groups.add_parser("referrals", help="the referral program")
    referral_commands = referrals.add_subparsers(dest="action", required=True)
    referral_list = referral_commands.add_parser("list", help="referrals, newest first")
    referral_list.add_argument("--flagged", action="store_true", help="only those flagged as abuse")
    referral_list.add_argument("--status", choices=sorted(_REFERRAL_STATUSES))
    referral_list.add_argument("--limit", type=int, default=100)
    referral_list.add_argument("--json", action="store_true")
    referral_list.set_defaults(run=_run(_referrals_list))
    for name, help_text in (
        ("approve", "a referral under review earns its rewards (once the threshold is met)"),
        ("reject", "a referral under review (or pending) earns nothing"),
    ):
        decide = referral_commands.add_parser(name, help=help_text)
        decide.add_argument("referral_id")
        decide.add_argument("--reason", required=True, help="why (recorded in the audit log)")
        decide.add_argument(
            "--actor", default=os.environ.get("USER", "admin"), help="who is acting"
        )
        decide.add_argument("--json", action="store_true")
        decide.set_defaults(run=_run(_referrals_review))

    payments = groups.add_parser("payments", help="purchases through Stripe")
    payment_commands = payments.add_subparsers(dest="action", required=True)
    ignored = payment_commands.add_parser(
        "ignored", help="signed, paid sessions that were not credited (and why), newest first"
    )
    ignored.add_argument("--limit", type=int, default=100)
    ignored.add_argument("--json", action="store_true")
    ignored.set_defaults(run=_run(_payments_ignored))

    logs = groups.add_parser("logs", help="request logs")
    log_commands = logs.add_subparsers(dest="action", required=True)
    log_list = log_commands.add_parser("list", help="request logs, newest first")
    log_list.add_argument("--account")
    log_list.add_argument("--request-id")
    log_list.add_argument("--since", help="ISO time or a duration back: 30m, 12h, 7d")
    log_list.add_argument("--until", help="ISO time or a duration back")
    log_list.add_argument("--limit", type=int, default=100)
    log_list.add_argument(
        "--content", action="store_true", help="show request and response content"
    )
    log_list.add_argument("--json", action="store_true")
    log_list.set_defaults(run=_run(_logs_list))
    purge = log_commands.add_parser("purge", help="remove logs older than the retention window now")
    purge.add_argument("--dry-run", action="store_true", help="only report what would go")
    purge.add_argument("--json", action="store_true")
    purge.set_defaults(run=_run(_logs_purge))

    audit = groups.add_parser("audit", help="the admin audit log, newest first")
    audit.add_argument("--account", help="only this account's entries")
    audit.add_argument("--limit", type=int, default=100)
    audit.add_argument("--json", action="store_true")
    audit.set_defaults(run=_run(_audit))

    credits = groups.add_parser("credits", help="credit balances")
    credit_commands = credits.add_subparsers(dest="action", required=True)
    adjust = credit_commands.add_parser(
        "adjust", help="add (positive) or remove (negative) credit, as a ledger entry"
    )
    adjust.add_argument("account_id")
    adjust.add_argument("amount_usd", help='signed decimal USD, e.g. "5" or "-2.50"')
    adjust.add_argument("--reason", required=True)
    adjust.add_argument("--idempotency-key", help="retry-safe: the same key applies once")
    adjust.add_argument("--actor", default=os.environ.get("USER", "admin"), help="who is acting")
    adjust.add_argument("--json", action="store_true")
    adjust.set_defaults(run=_run(_credits_adjust))

    limits = groups.add_parser("limits", help="tiers and rate limits")
    limit_commands = limits.add_subparsers(dest="action", required=True)
    show = limit_commands.add_parser("show", help="an account's tier, limits and current usage")
    show.add_argument("account_id")
    show.add_argument("--model", help="also count this model's per-model requests")
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=_run(_limits_show))
    pin = limit_commands.add_parser(
        "pin-tier", help="hold an account at a tier ('none': follow purchases)"
    )
    pin.add_argument("account_id")
    pin.add_argument("tier")
    pin.add_argument("--json", action="store_true")
    pin.set_defaults(run=_run(_limits_pin))

    ledger = groups.add_parser("ledger", help="the credit ledger")
    ledger_commands = ledger.add_subparsers(dest="action", required=True)
    verify = ledger_commands.add_parser(
        "verify",
        help="prove balances equal their entries and every hold ended once (exit 2 if not)",
    )
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(run=_run(_ledger_verify))

    add_incident_commands(groups, admin=lambda: _Admin(read_settings()), show=_print, run=_run)
