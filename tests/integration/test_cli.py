"""`kyma admin` against a running core, as an operator runs it."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

pytestmark = pytest.mark.asyncio


async def kyma_cli(kyma, *args: str, token: str | None = None) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "KYMA_CORE_ADDRESS": kyma.grpc_target,
        "KYMA_ADMIN_TOKEN": token or kyma.settings.admin_token.get_secret_value(),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "core_service.cli.main",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    return process.returncode or 0, out.decode(), err.decode()


async def test_admin_accounts_create_json_key_works_with_the_sdk(kyma) -> None:
    code, out, _ = await kyma_cli(
        kyma, "admin", "accounts", "create", f"cli-{kyma.backend}@example.com", "--json"
    )
    assert code == 0
    created = json.loads(out)
    key = created["api_key_secret"]
    assert (
        key.startswith("ky_") and created["account"]["email"] == f"cli-{kyma.backend}@example.com"
    )
    async with kyma.client(key) as sdk:
        reply = await sdk.chat.completions.create(
            model="kyma-demo", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert reply.choices[0].message.content


async def test_admin_errors_are_one_clear_line(kyma) -> None:
    code, out, err = await kyma_cli(kyma, "admin", "accounts", "create", "not-an-email")
    assert code == 1 and "INVALID_ARGUMENT" in err and "Traceback" not in err
    code, _, err = await kyma_cli(
        kyma, "admin", "accounts", "create", "x@example.com", token="wrong"
    )
    assert code == 1 and "UNAUTHENTICATED" in err and "wrong" not in err
