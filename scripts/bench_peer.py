"""A peer gateway for scripts/bench to measure beside Kyma: LiteLLM's proxy (`--peer litellm`),
run offline on loopback in front of the bench's own test upstream.

The bench installs LiteLLM itself, once, into a virtual environment of its own under the cache
directory (`<cache>/litellm-<version>/`), never into Kyma's: pinned to `LITELLM_SPEC` (the
version the peer harness in ../shared/peers/litellm/ measured; never 1.82.7 or 1.82.8, PyPI
releases that were backdoored in March 2026). A marker file written after a complete install
lets later runs reuse it; a lock file keeps two benches from installing at once. No LiteLLM code
lives in this repository: the bench writes a config file for the run into its work dir.

Offline: LiteLLM 1.108.7 fetches its model cost map (and, lazily, a few other lists) from GitHub
at start unless the LITELLM_LOCAL_* switches below are set; the harness checked with strace that
with them it makes no connection beyond loopback. No database, no Redis, no callbacks, no retries;
a static master key (without one 1.108.7 refuses to start). One worker (uvicorn), as measured in
the issue: start-up takes 12-15 s on a quiet 2-core machine.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass

from bench_proc import HOST, Processes, free_port, http_get

LITELLM_VERSION = "1.108.7"
LITELLM_SPEC = f"litellm[proxy]=={LITELLM_VERSION}"
# Kyma's own pin (pyproject.toml): uvicorn uses httptools when it is there, as Kyma's bridge does.
EXTRA_SPECS = ("httptools==0.9.0",)
PEERS = ("litellm",)

OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_OFFLINE_MODE": "true",  # the one switch of newer releases; 1.108.7 ignores it
    "LITELLM_LOG": "ERROR",
    "LITELLM_MODE": "PRODUCTION",  # do not load a .env from the working directory
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
# Settings that would make it reach a database, Redis or a proxy
UNSET_ENV = ("DATABASE_URL", "REDIS_HOST", "REDIS_URL", "REDIS_PORT", "REDIS_PASSWORD")


def default_cache_dir() -> pathlib.Path:
    """Where the bench keeps what it installs: $KYMA_TEST_CACHE/bench (as scripts/setup-llama
    caches under KYMA_TEST_CACHE), else ~/.cache/kyma/bench."""
    base = os.environ.get("KYMA_TEST_CACHE") or str(pathlib.Path.home() / ".cache" / "kyma")
    return pathlib.Path(base) / "bench"


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def ensure_litellm(cache_dir: pathlib.Path) -> pathlib.Path:
    """The virtual environment holding LITELLM_SPEC, installed first if it is not there yet;
    returns its directory."""
    venv = cache_dir / f"litellm-{LITELLM_VERSION}"
    marker = venv / "kyma-bench-installed.json"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f"litellm-{LITELLM_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return venv
        _log(f"installing {LITELLM_SPEC} into {venv} (once; later runs reuse it)")
        started = time.monotonic()
        python = venv / "bin" / "python"
        if not python.exists():
            # the interpreter Kyma runs on; a venv made from inside a venv uses its base Python
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        install = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", LITELLM_SPEC, *EXTRA_SPECS],
            capture_output=True,
            text=True,
        )
        if install.returncode != 0:
            raise RuntimeError(
                f"installing {LITELLM_SPEC} failed:\n{install.stdout[-2000:]}{install.stderr[-3000:]}"
            )
        check = subprocess.run(
            [str(python), "-c", "import litellm.proxy.proxy_server, httptools"],
            capture_output=True,
            text=True,
            env={**os.environ, **OFFLINE_ENV},
        )
        if check.returncode != 0:
            raise RuntimeError(f"{LITELLM_SPEC} installed but does not import:\n{check.stderr}")
        frozen = subprocess.run(
            [str(python), "-m", "pip", "freeze"], capture_output=True, text=True
        ).stdout.split()
        marker.write_text(
            json.dumps({"spec": LITELLM_SPEC, "extra": EXTRA_SPECS, "packages": frozen}, indent=1)
            + "\n"
        )
        _log(f"installed {LITELLM_SPEC} in {time.monotonic() - started:.0f}s")
        return venv


@dataclass
class Peer:
    name: str
    pid: int
    port: int
    model: str
    api_key: str
    version: str
    started_s: float  # from launch to answering its liveness check


@dataclass
class PendingPeer:
    """A peer launched but perhaps not ready yet: it starts while Kyma does."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    model: str
    api_key: str
    launched: float


def config_yaml(model: str, upstream_model: str, upstream_port: int, master_key: str) -> str:
    """LiteLLM's config for the run: one model routed to the bench's test upstream. JSON is
    YAML, and saves quoting rules."""
    config = {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {
                    "model": f"openai/{upstream_model}",
                    "api_base": f"http://{HOST}:{upstream_port}/v1",
                    "api_key": "sk-bench-upstream",
                },
            }
        ],
        "litellm_settings": {
            "telemetry": False,
            "num_retries": 0,
            "request_timeout": 60,
            "callbacks": [],
            "set_verbose": False,
        },
        # Without a database the master key is a plain comparison (no virtual keys, no spend logs).
        "general_settings": {"master_key": master_key, "disable_spend_logs": True},
    }
    return json.dumps(config, indent=2) + "\n"


def launch_litellm(
    procs: Processes, venv: pathlib.Path, model: str, upstream_model: str, upstream_port: int
) -> PendingPeer:
    master_key = f"sk-bench-{secrets.token_hex(8)}"
    config = procs.workdir / "litellm_config.yaml"
    config.write_text(config_yaml(model, upstream_model, upstream_port, master_key))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in UNSET_ENV and not k.startswith("KYMA_")}
    env.update(OFFLINE_ENV)
    proc = procs.start(
        "litellm",
        [
            str(venv / "bin" / "litellm"),
            "--config",
            str(config),
            "--host",
            HOST,
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        env,
        cwd=procs.workdir,
    )
    return PendingPeer("litellm", proc, port, model, master_key, time.monotonic())


def wait_ready(procs: Processes, pending: PendingPeer, timeout: float = 300.0) -> Peer:
    """Wait until the peer answers its liveness check (start-up is slow on a loaded machine)."""
    url = f"http://{HOST}:{pending.port}/health/liveliness"
    deadline = pending.launched + timeout
    while time.monotonic() < deadline:
        if http_get(url) == 200:
            return Peer(
                pending.name,
                pending.proc.pid,
                pending.port,
                pending.model,
                pending.api_key,
                LITELLM_VERSION,
                time.monotonic() - pending.launched,
            )
        if pending.proc.poll() is not None:
            break
        time.sleep(0.25)
    raise RuntimeError(
        f"{pending.name} did not start (exit {pending.proc.poll()}); its output:\n"
        f"{procs.log(pending.name)[-3000:]}"
    )
