"""`kyma admin …`: operators' commands, calling the core's AdminService through the generated
stubs with the admin token (KYMA_ADMIN_TOKEN, or the token file the core wrote in data_dir)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import json_format
from kyma.admin.v1 import admin_service_pb2 as pb
from kyma.admin.v1 import admin_service_pb2_grpc as pb_grpc

from core_service.settings import Settings


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
    admin = _Admin(Settings())
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


def _run(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except grpc.RpcError as error:
            print(f"kyma admin: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1

    return run


def add_commands(commands: Any) -> None:
    admin = commands.add_parser("admin", help="operators' commands (need the admin token)")
    groups = admin.add_subparsers(dest="group", required=True)

    accounts = groups.add_parser("accounts", help="accounts and their keys")
    account_commands = accounts.add_subparsers(dest="action", required=True)
    create = account_commands.add_parser("create", help="create an account and its first key")
    create.add_argument("email")
    create.add_argument("--key-name", default="default")
    create.add_argument("--json", action="store_true", help="print JSON for scripts")
    create.set_defaults(run=_run(_accounts_create))
