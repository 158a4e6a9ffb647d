"""The real coding CLIs against Kyma: OpenAI's Codex CLI (`codex exec`, Kyma as a custom model
provider on the Responses wire API) and Anthropic's Claude Code (`claude -p` with
`ANTHROPIC_BASE_URL` on Kyma), each completing a one-turn task against a model served by the
test upstream — natively, and translated to chat completions.

The CLIs come from npm (`scripts/setup-clis`, pinned, cached per machine); these tests skip,
saying why, only when npm cannot install them. They run on SQLite only: they exercise the HTTP
surface, which the SDK tests cover on both databases.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
from collections.abc import AsyncIterator

import orjson
import pytest
import pytest_asyncio

from core_service.logs.query import RequestLogQuery
from tests.conftest import running_kyma  # type: ignore[import-not-found]

pytestmark = pytest.mark.asyncio

ROOT = pathlib.Path(__file__).resolve().parents[2]
NATIVE, TRANSLATED = "native-model", "test-model"
BOTH = pytest.mark.parametrize("model", [NATIVE, TRANSLATED])
# A liveness bound for one CLI run, not a measure of speed.
RUN_SECONDS = 300


@pytest.fixture(scope="module")
def clis() -> pathlib.Path:
    """The CLIs' bin directory, installed by scripts/setup-clis if they are not yet."""
    setup = subprocess.run(
        [str(ROOT / "scripts" / "setup-clis")], capture_output=True, text=True, timeout=900
    )
    if setup.returncode != 0:
        pytest.skip(f"Codex CLI and Claude Code are not installed: {setup.stderr.strip()}")
    cache = os.environ.get("KYMA_TEST_CACHE") or str(pathlib.Path.home() / ".cache" / "kyma")
    return pathlib.Path(cache) / "clis" / "node_modules" / ".bin"


@pytest_asyncio.fixture(scope="module")
async def cli_kyma(upstream, tmp_path_factory) -> AsyncIterator:
    async with running_kyma(tmp_path_factory.mktemp("clis"), None, upstream, "sqlite") as kyma:
        yield kyma
        await kyma.verify_ledger()


@pytest_asyncio.fixture(autouse=True)
async def _upstream_answers_naturally(_fresh_upstream_and_ledger_check: None, upstream) -> None:
    await upstream.control(reply_tokens=12)


async def run(command: list[str], env: dict[str, str], cwd: pathlib.Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *command,
        env={"PATH": os.environ["PATH"], **env},
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), RUN_SECONDS)
    except TimeoutError:
        process.kill()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def answered(kyma, account_id: str, endpoint: str) -> list[str]:
    """The texts Kyma answered the account with at `endpoint`, from its request log."""
    await kyma.settled()
    await kyma.core.request_log.flush(timeout=30)
    entries = await RequestLogQuery(kyma.core.engine).find(account_id=account_id)
    texts = []
    for entry in entries:
        assert entry.status == "ok", entry
        if entry.endpoint != endpoint:
            continue
        body = orjson.loads(entry.response_body)
        for item in body.get("output") or body.get("content") or []:
            for part in item.get("content") or [item]:
                if isinstance(part, dict) and part.get("type") in ("output_text", "text"):
                    texts.append(part["text"])
    return texts


async def served_natively(kyma, model: str, path: str) -> None:
    paths = (await kyma.upstream.stats())["requests_by_path"]
    if model == NATIVE:
        assert paths.get(path), paths
    else:
        assert paths.get("/v1/chat/completions") and path not in paths, paths


@BOTH
async def test_codex_exec(clis, cli_kyma, tmp_path, model: str) -> None:
    account_id, key = await cli_kyma.create_account()
    if model == TRANSLATED:
        await cli_kyma.upstream.control(dialects=["chat"])
    home, work = tmp_path / "codex-home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    # As the README tells Codex users: Kyma as a provider on the Responses wire API, and no
    # hosted web search (no chat-only upstream can run it).
    (home / "config.toml").write_text(
        f"""model = "{model}"
model_provider = "kyma"
web_search = "disabled"

[model_providers.kyma]
name = "Kyma"
base_url = "{cli_kyma.base_url}"
env_key = "KYMA_API_KEY"
wire_api = "responses"
"""
    )
    env = {"HOME": str(tmp_path), "CODEX_HOME": str(home), "KYMA_API_KEY": key}
    code, out, err = await run(
        [str(clis / "codex"), "exec", "--skip-git-repo-check", "Say hello."], env, work
    )
    assert code == 0, err[-3000:]
    [text] = await answered(cli_kyma, account_id, "responses")
    assert text and text in out
    await served_natively(cli_kyma, model, "/v1/responses")


@BOTH
async def test_claude_code_print(clis, cli_kyma, tmp_path, model: str) -> None:
    account_id, key = await cli_kyma.create_account()
    if model == TRANSLATED:
        await cli_kyma.upstream.control(dialects=["chat"])
    work = tmp_path / "work"
    work.mkdir()
    env = {
        "HOME": str(tmp_path),
        "ANTHROPIC_BASE_URL": cli_kyma.http_url,
        "ANTHROPIC_API_KEY": key,
        "ANTHROPIC_MODEL": model,
        # Its background calls (titles, summaries) go to the same model.
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": model,
        "ANTHROPIC_SMALL_FAST_MODEL": model,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    code, out, err = await run([str(clis / "claude"), "-p", "Say hello."], env, work)
    assert code == 0, (out + err)[-3000:]
    texts = await answered(cli_kyma, account_id, "messages")
    assert texts and texts[0] in out
    await served_natively(cli_kyma, model, "/v1/messages")
