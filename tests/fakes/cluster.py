"""Kyma as a cluster on loopback, for tests: `kyma serve core` and `kyma serve bridge` as real
processes (`KymaProcess`), and a real nginx in front of the bridges (`nginx`) with the proxy
settings the repository ships (deploy/nginx/kyma-proxy.conf).

Every process binds port 0 (nginx a free port: it cannot say which port 0 gave it) and says
where it listens on its first line; its other output goes to a log file in its directory,
shown when it fails to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import IO

import httpx
import pytest

from tests.fakes.pg_cluster import free_port
from tests.fakes.processes import stop_process
from tests.fakes.waiting import LIVENESS

REPOSITORY = pathlib.Path(__file__).resolve().parents[2]
PROXY_SETTINGS = REPOSITORY / "deploy" / "nginx" / "kyma-proxy.conf"
NGINX = pathlib.Path("/usr/sbin/nginx")


@dataclass
class KymaProcess:
    """One `kyma serve core|bridge` process."""

    part: str
    process: asyncio.subprocess.Process
    address: str  # host:port (core) or http://host:port (bridge)
    log: pathlib.Path

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def stop(self) -> int:
        """SIGTERM (graceful: a core drains its in-flight requests), then wait for the exit."""
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), LIVENESS)

    async def kill(self) -> None:
        """SIGKILL: a crash."""
        if self.alive:
            self.process.kill()
        await self.process.wait()


async def spawn_kyma(
    env: dict[str, str], *part: str, stderr: int | IO[bytes] = asyncio.subprocess.PIPE
) -> asyncio.subprocess.Process:
    """`kyma serve [PART]` with exactly `env`; its first line (where it listens) on stdout."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "core_service.cli.main",
        "serve",
        *part,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
    )


async def spawn_logged(
    part: str, directory: pathlib.Path, env: dict[str, str]
) -> asyncio.subprocess.Process:
    """`kyma serve PART` with `env` on top of this process's environment less its KYMA_*
    variables, its data directory `directory`, its log `directory/PART.log`."""
    directory.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("KYMA_")}
    with (directory / f"{part}.log").open("ab") as stderr:
        environment = {**base, "KYMA_DATA_DIR": str(directory), **env}
        return await spawn_kyma(environment, part, stderr=stderr)


@contextlib.asynccontextmanager
async def kyma_process(
    part: str, directory: pathlib.Path, env: dict[str, str]
) -> AsyncIterator[KymaProcess]:
    """`kyma serve PART` as `spawn_logged` starts it, once it says it listens; stopped
    (SIGTERM, then SIGKILL) at exit."""
    log = directory / f"{part}.log"
    process = await spawn_logged(part, directory, env)
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), LIVENESS)).decode()
        assert "listening on" in line, f"kyma {part} did not start: {line!r}\n{log.read_text()}"
        yield KymaProcess(part, process, line.strip().rsplit(" ", 1)[1], log)
    finally:
        await stop_process(process, LIVENESS)


@dataclass
class Nginx:
    url: str  # http://127.0.0.1:PORT
    directory: pathlib.Path
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


def nginx_config(directory: pathlib.Path, port: int, bridges: list[str]) -> str:
    """The test's nginx.conf: deploy/nginx/nginx.conf's shape, on loopback, with its paths in
    `directory` and the repository's proxy settings included as they are."""
    servers = "\n".join(
        f"        server {bridge.removeprefix('http://')} max_fails=1 fail_timeout=5s;"
        for bridge in bridges
    )
    # As root, nginx hands its workers to an unprivileged user; they must reach the temp dirs.
    user = "user nobody nogroup;" if os.geteuid() == 0 else ""
    return f"""{user}
worker_processes 1;
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_max_body_size 16m;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    upstream kyma_bridges {{
        least_conn;
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://kyma_bridges;
            include {PROXY_SETTINGS};
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx(directory: pathlib.Path, bridges: list[str]) -> Iterator[Nginx]:
    """nginx (Debian's package) in front of `bridges` until exit; skips the test when it is not
    installed (./scripts/setup-system installs it)."""
    binary = NGINX if NGINX.is_file() else shutil.which("nginx")
    if binary is None:
        pytest.skip("nginx is not installed (apt package nginx; ./scripts/setup-system)")
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o777)
    port = free_port()
    config = directory / "nginx.conf"
    config.write_text(nginx_config(directory, port, bridges))
    process = subprocess.Popen(
        [str(binary), "-c", str(config), "-p", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=(directory / "stderr.log").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _until_answers(url, process, directory)
        yield Nginx(url, directory, process)
    finally:
        process.terminate()  # SIGTERM: nginx's fast shutdown
        try:
            process.wait(LIVENESS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _until_answers(url: str, process: subprocess.Popen[bytes], directory: pathlib.Path) -> None:
    """Until nginx answers /healthz through a bridge (liveness bound: LIVENESS)."""
    with httpx.Client(timeout=LIVENESS) as client:
        for _ in range(int(LIVENESS / 0.05)):
            if process.poll() is not None:
                log = (directory / "stderr.log").read_text(errors="replace")
                raise AssertionError(f"nginx exited ({process.returncode}): {log}")
            try:
                if client.get(f"{url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise AssertionError(f"nginx on {url} never answered")


# --- load through HTTP, and what each request got ---------------------------------------------


@dataclass
class Outcome:
    """One request as its client saw it."""

    stream: bool
    phase: str  # the load's phase when the request was sent
    status: int | None = None  # None: no HTTP answer at all
    request_id: str | None = None
    complete: bool = False  # unary: a body with choices; stream: [DONE] and no error event
    error: str | None = None  # what went wrong, if anything

    @property
    def started(self) -> bool:
        """Answered 200: for a stream, its first events were on their way."""
        return self.status == 200


@dataclass
class MixedLoad:
    """`workers` clients sending chat completions, every other one streamed, until `stop()`."""

    url: str
    key: str
    workers: int = 12
    max_tokens: int = 8
    phase: str = "before"

    def __post_init__(self) -> None:
        self.outcomes: list[Outcome] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def done(self, phase: str | None = None) -> int:
        return sum(1 for o in self.outcomes if phase in (None, o.phase))

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.complete]

    def start(self) -> None:
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=LIVENESS,
            limits=httpx.Limits(max_connections=self.workers),
            headers={"authorization": f"Bearer {self.key}"},
        )
        self._tasks = [asyncio.create_task(self._worker(n % 2 == 1)) for n in range(self.workers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._http.aclose()

    def _body(self, stream: bool) -> dict[str, object]:
        body: dict[str, object] = {
            "model": "test-model",
            "messages": [{"role": "user", "content": "Tell me a story"}],
            "max_tokens": self.max_tokens,
        }
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        return body

    async def _worker(self, stream: bool) -> None:
        while not self._stop.is_set():
            outcome = Outcome(stream=stream, phase=self.phase)
            try:
                if stream:
                    await self._streamed(outcome)
                else:
                    await self._unary(outcome)
            except httpx.HTTPError as error:
                outcome.error = f"{type(error).__name__}: {error}"
            self.outcomes.append(outcome)

    async def _unary(self, outcome: Outcome) -> None:
        reply = await self._http.post("/v1/chat/completions", json=self._body(False))
        outcome.status, outcome.request_id = reply.status_code, reply.headers.get("x-request-id")
        if reply.status_code == 200 and reply.json().get("choices"):
            outcome.complete = True
        else:
            outcome.error = reply.text[:300]

    async def _streamed(self, outcome: Outcome) -> None:
        async with self._http.stream(
            "POST", "/v1/chat/completions", json=self._body(True)
        ) as reply:
            outcome.status = reply.status_code
            outcome.request_id = reply.headers.get("x-request-id")
            if reply.status_code != 200:
                outcome.error = (await reply.aread()).decode(errors="replace")[:300]
                return
            async for line in reply.aiter_lines():
                if line.startswith('data: {"error"'):
                    outcome.error = line
                elif line == "data: [DONE]":
                    outcome.complete = outcome.error is None
