"""Kyma's gateway overhead benchmark: the same requests sent straight to a test upstream, through
Kyma (bridge -> core -> upstream) and, with `--peer litellm`, through LiteLLM's proxy, side by
side in one run, with one load generator (bench_client.py).

It starts a test upstream, a Kyma core and a Kyma bridge as separate processes (fresh data dir,
free loopback ports), creates an account, and (with --peer) LiteLLM in front of the same upstream
(bench_peer.py installs it once into a cache dir of its own). Each scenario runs a warm-up then a
measured window against every target in turn (direct, kyma, litellm). For gateway rows it reads
the CPU time (utime+stime from /proc) of the gateway's processes in the measured window and
divides it by the requests (and, for streams, by the chunks): the gateway's own cost. Every row
also carries the direct upstream's own CPU per request in the same scenario, so that figures from
different machines can be compared, the machine's load average and the CPU that processes other
than the bench's used in the window, and the RSS of every process after it.

Scenarios (`--modes`): non-streaming at each `--concurrency`; streaming as fast as the upstream
can at each concurrency and each `--stream-tokens` length (two lengths give each gateway's fixed
cost per stream and cost per chunk, fitted); and paced like a real model (`--paced-*`: by default
200 concurrent streams at 50 tokens/s, 300 tokens each, the test upstream pacing each stream on its
own), reporting CPU per chunk, the time to first token and the inter-chunk delay each gateway adds
over the same load sent directly. `--soak MINUTES` then keeps a steady load on Kyma and samples
every process's RSS every `--soak-interval` seconds (bench_soak.py).

By default every request comes from one account (one API key, all connections); `--accounts N`
spreads the connections over N accounts (connection i uses account i mod N). The database is a
SQLite file in the work dir unless `--database-url` names a PostgreSQL server: then the bench makes
a fresh database in it for the run (dropped at the end) and, around each direct and Kyma window,
reads what that database did (transactions, rows written, WAL, statements if it can: see
bench_db.py), per request. With `--redis-url`, likewise Redis's commands and CPU per request. The
children's logs are kept next to the JSON (<json>-logs/) and their warnings and errors are summed
up at the end.

Prints markdown tables and writes JSON to bench-results/<timestamp>.json (or --json PATH).
Run it through ./scripts/bench.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime as dt
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import uvloop

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_db  # noqa: E402
import bench_peer  # noqa: E402
import bench_report  # noqa: E402
import bench_soak  # noqa: E402
from bench_cgroup import CpuBudget  # noqa: E402
from bench_client import Result, build_request, run_load  # noqa: E402
from bench_proc import (  # noqa: E402
    CLK_TCK,
    HOST,
    Processes,
    cpu_ticks,
    free_port,
    free_port_range,
    loadavg,
    machine_busy_ticks,
    tree_rss_mb,
    wait_http,
)
from bench_stats import StreamWindow, difference, judge_stream_cost, percentile, ratio  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
VENV_BIN = pathlib.Path(sys.executable).parent
KYMA = str(VENV_BIN / "kyma")
PUBLIC_MODEL = "bench-model"
UPSTREAM_MODEL = "upstream-model"
MODES = ("nonstream", "stream", "paced")
MAX_TOKENS = 16  # non-streaming requests and the short streams
PACED_WARMUP_TOKENS = 8


# --- the processes under test ---------------------------------------------------------------


@dataclass
class Target:
    """Something the load is sent to: the upstream itself, Kyma's bridge, or a peer gateway."""

    name: str  # direct | kyma | litellm
    port: int
    model: str
    keys: list[str]  # bearer keys, one per account; none for the upstream
    processes: dict[str, int]  # the gateway's own processes (name -> pid); none for direct


@dataclass
class Stack:
    upstream_pid: int
    upstream_port: int
    core_pid: int
    bridge_pid: int
    bridge_port: int
    api_keys: list[str]
    peer: bench_peer.Peer | None = None
    extra: dict[str, int] = field(default_factory=dict)  # e.g. the faulty upstream
    startup: dict[str, float] = field(default_factory=dict)  # seconds, see start_stack

    @property
    def processes(self) -> dict[str, int]:
        """Every long-lived process of the bench, by name."""
        named = {"upstream": self.upstream_pid, "core": self.core_pid, "bridge": self.bridge_pid}
        if self.peer is not None:
            named[self.peer.name] = self.peer.pid
        return {**named, **self.extra}

    @property
    def gateway_processes(self) -> list[int]:
        return [
            pid
            for name, pid in self.processes.items()
            if name in ("core", "bridge", *bench_peer.PEERS)
        ]

    def targets(self) -> list[Target]:
        found = [
            Target("direct", self.upstream_port, UPSTREAM_MODEL, [], {}),
            Target(
                "kyma",
                self.bridge_port,
                PUBLIC_MODEL,
                self.api_keys,
                {"core": self.core_pid, "bridge": self.bridge_pid},
            ),
        ]
        if self.peer is not None:
            found.append(
                Target(
                    self.peer.name,
                    self.peer.port,
                    self.peer.model,
                    [self.peer.api_key],
                    {self.peer.name: self.peer.pid},
                )
            )
        return found


def upstream_argv() -> list[str]:
    if subprocess.run([KYMA, "test-upstream", "--help"], capture_output=True).returncode == 0:
        return [KYMA, "test-upstream"]
    return [sys.executable, "-m", "core_service.simulators.test_upstream.server"]


def start_stack(
    procs: Processes,
    args: argparse.Namespace,
    database_url: str | None = None,
    budget: CpuBudget | None = None,
) -> Stack:
    workdir = procs.workdir
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("KYMA_")}

    # 1. the test upstream
    argv = upstream_argv()
    pacing = [
        "--latency-ms",
        str(args.upstream_latency_ms),
        "--tokens-per-second",
        str(args.upstream_tokens_per_second),
    ]
    upstream = procs.start("upstream", [*argv, "--host", HOST, "--port", "0", *pacing], base_env)
    match = procs.wait_for_line(
        "upstream", upstream, r"test-upstream listening on http://[^:\s]+:(\d+)", 30
    )
    upstream_port = int(match.group(1))
    extra: dict[str, int] = {}
    faulty_deployment = ""
    if args.fault_rate:
        # A second deployment of the same model that fails a share of its requests with 500s.
        faulty = procs.start(
            "faulty-upstream",
            [
                *argv,
                "--host",
                HOST,
                "--port",
                "0",
                *pacing,
                "--error-rate",
                str(args.fault_rate),
                "--error-status",
                "500",
                "--seed",
                "7",
            ],
            base_env,
        )
        faulty_match = procs.wait_for_line(
            "faulty-upstream", faulty, r"test-upstream listening on http://[^:\s]+:(\d+)", 30
        )
        extra["faulty-upstream"] = faulty.pid
        faulty_deployment = (
            "      - name: upstream-faulty\n"
            f"        base_url: http://{HOST}:{faulty_match.group(1)}/v1\n"
            f"        model: {UPSTREAM_MODEL}\n"
        )

    # 2. the peer starts now, while Kyma does: its start-up is the slowest part
    pending = None
    if args.peer == "litellm":
        pending = bench_peer.launch_litellm(
            procs, args.peer_venv, PUBLIC_MODEL, UPSTREAM_MODEL, upstream_port
        )

    # 3. Kyma core and bridge, as two processes so each one's CPU can be read
    catalog = workdir / "catalog.yaml"
    catalog.write_text(
        "models:\n"
        f"  - name: {PUBLIC_MODEL}\n"
        '    price: {input_per_million: "0.10", output_per_million: "0.20"}\n'
        "    deployments:\n"
        "      - name: upstream-1\n"
        f"        base_url: http://{HOST}:{upstream_port}/v1\n"
        f"        model: {UPSTREAM_MODEL}\n" + faulty_deployment
    )
    # Core k of --workers listens on grpc_port + k: a range below the ephemeral ports, which no
    # port bound to 0 (the HTTP port here, a worker's metrics port, a connection) can take.
    http_port = free_port()
    grpc_port = free_port_range(args.workers)
    env = {
        **base_env,
        "KYMA_DATA_DIR": str(workdir / "data"),
        "KYMA_GRPC_HOST": HOST,
        "KYMA_GRPC_PORT": str(grpc_port),
        "KYMA_HTTP_HOST": HOST,
        "KYMA_HTTP_PORT": str(http_port),
        # free ports of their own: the defaults may be another Kyma's on a shared machine
        "KYMA_METRICS_PORT": str(free_port()),
        "KYMA_BRIDGE_METRICS_PORT": str(free_port()),
        "KYMA_CATALOG": str(catalog),
        # Enough credit for any run (the welcome bonus is configuration; price is still charged).
        "KYMA_WELCOME_BONUS_USD": "1000000",
        # Limits high enough never to refuse: every request is still checked and counted.
        "KYMA_TIERS": json.dumps(
            [{"tier": 0, "min_purchased_usd": "0", "rpm": 10**9, "model_rpm": 10**9, "tpm": 10**12}]
        ),
    }
    if database_url:
        env["KYMA_DATABASE_URL"] = database_url
    if args.redis_url:
        env["KYMA_REDIS_URL"] = args.redis_url
        env["KYMA_REDIS_KEY_PREFIX"] = f"kyma-bench:{uuid.uuid4().hex[:8]}:"
    if args.log_level:
        env["KYMA_LOG_LEVEL"] = args.log_level
    env.update(args.core_env)
    # With --workers N: N cores under one `kyma serve core` parent (ports GRPC_PORT + k) and N
    # bridges under one `kyma serve bridge` parent (sharing the HTTP port, each balancing over
    # every core), as `kyma serve` runs them; "core" and "bridge" below are then the two trees.
    ready_line = r"kyma core listening on"
    bridge_env = env
    if args.workers > 1:
        env["KYMA_WORKERS"] = str(args.workers)
        env["KYMA_METRICS_PORT"] = env["KYMA_BRIDGE_METRICS_PORT"] = "0"  # any free ports
        ready_line = r"kyma serving on"
        bridge_env = {
            **env,
            "KYMA_CORE_ADDRESS": ",".join(f"{HOST}:{grpc_port + k}" for k in range(args.workers)),
        }
    launched = time.monotonic()
    join = budget.join if budget else None
    core = procs.start("core", [KYMA, "serve", "core"], env, join=join)
    procs.wait_for_line("core", core, ready_line, 90)
    core_ready = time.monotonic()
    bridge = procs.start("bridge", [KYMA, "serve", "bridge"], bridge_env, join=join)
    procs.wait_for_line(
        "bridge", bridge, ready_line.replace("core listening", "bridge listening"), 90
    )
    wait_http(f"http://{HOST}:{http_port}/healthz", bridge, "bridge", 30)
    wait_http(f"http://{HOST}:{http_port}/readyz", bridge, "bridge (core reachable)", 30)
    # one after the other (not as `kyma serve` starts them): each one's own start-up time
    startup = {
        "core_listening_s": core_ready - launched,
        "bridge_ready_s": time.monotonic() - core_ready,
    }

    # 4. the accounts and their keys (unique emails per run)
    run_id = uuid.uuid4().hex[:12]
    emails = [f"bench+{run_id}-{i}@example.com" for i in range(args.accounts)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        api_keys = list(pool.map(lambda email: create_account(env, email), emails))

    stack = Stack(upstream.pid, upstream_port, core.pid, bridge.pid, http_port, api_keys)
    stack.extra = extra
    stack.startup = startup
    if pending is not None:
        print("bench: waiting for litellm to start", file=sys.stderr, flush=True)
        stack.peer = bench_peer.wait_ready(procs, pending)
    return stack


def create_account(env: dict[str, str], email: str) -> str:
    """A new account with one API key; returns the key. The environment above already gives it
    a large welcome bonus and a tier table whose limits never refuse (while still counting)."""
    created = subprocess.run(
        [KYMA, "admin", "accounts", "create", email, "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if created.returncode != 0:
        raise RuntimeError(f"kyma admin accounts create failed:\n{created.stdout}{created.stderr}")
    return str(json.loads(created.stdout)["api_key_secret"])


def set_upstream_pacing(stack: Stack, tokens_per_second: float) -> None:
    """Change the test upstream's stream pacing at run time (POST /_control)."""
    request = urllib.request.Request(
        f"http://{HOST}:{stack.upstream_port}/_control",
        data=json.dumps({"tokens_per_second": tokens_per_second}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status != 200:
            raise RuntimeError(f"test upstream refused pacing {tokens_per_second}")


# --- scenarios ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    mode: str  # nonstream | stream | paced
    concurrency: int
    max_tokens: int = MAX_TOKENS
    tokens_per_second: float = 0.0  # paced only: the upstream's pace per stream

    @property
    def stream(self) -> bool:
        return self.mode != "nonstream"

    @property
    def label(self) -> str:
        if self.mode == "nonstream":
            return "nonstream"
        if self.mode == "stream":
            return f"stream {self.max_tokens} tok"
        return f"paced {self.max_tokens} tok @{self.tokens_per_second:g}/s"

    @property
    def nominal_stream_s(self) -> float:
        return self.max_tokens / self.tokens_per_second if self.tokens_per_second else 0.0


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    found: list[Scenario] = []
    if "nonstream" in args.modes:
        found += [Scenario("nonstream", c) for c in args.concurrency]
    if "stream" in args.modes:
        found += [
            Scenario("stream", c, tokens) for c in args.concurrency for tokens in args.stream_tokens
        ]
    if "paced" in args.modes:
        found.append(Scenario("paced", args.paced_streams, args.paced_tokens, args.paced_tps))
    return found


def request_body(model: str, stream: bool, max_tokens: int = MAX_TOKENS) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello in a few words."},
        ],
        "max_tokens": max_tokens,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def prepared(target: Target, body: bytes) -> list[bytes]:
    if not target.keys:
        return [build_request(HOST, target.port, "/v1/chat/completions", body, {})]
    return [
        build_request(
            HOST, target.port, "/v1/chat/completions", body, {"Authorization": f"Bearer {key}"}
        )
        for key in target.keys
    ]


@dataclass
class Row:
    target: str
    mode: str
    concurrency: int
    requests: int
    errors: int
    elapsed_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    first_byte_p50_ms: float
    accounts: int = 1
    # CPU per request of each process (and "gateway": the target's processes together; "client":
    # the load generator). In direct rows the idle gateways are left out (see idle_cpu_cores).
    cpu_ms_per_req: dict[str, float] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    foreign_cpu_cores: float = 0.0
    kyma_idle_cpu_cores: dict[str, float] = field(default_factory=dict)  # direct rows only
    added_p50_ms: float | None = None
    rps_ratio: float | None = None
    # What PostgreSQL (--database-url) and Redis (--redis-url) did in the window: see bench_db.py
    db: dict[str, Any] | None = None
    redis: dict[str, Any] | None = None
    # --- the scenario
    scenario: str = ""
    max_tokens: int = MAX_TOKENS
    tokens_per_second: float = 0.0
    ok: int = 0
    cut: int = 0  # still running when the drain time ran out
    window_s: float = 0.0  # load plus the wait for the gateway to go idle
    # --- the machine during the window
    loadavg: tuple[float, float, float] = (0.0, 0.0, 0.0)  # at its start
    idle_cpu_cores: dict[str, float] = field(default_factory=dict)  # bench processes not loaded
    cpu_ms_total: dict[str, float] = field(default_factory=dict)
    # --- the direct upstream's own cost in the same scenario, beside every figure
    upstream_direct_cpu_ms_per_req: float | None = None
    gateway_per_upstream_cpu: float | None = None  # gateway CPU per request / that
    # --- streams
    chunks: int = 0
    chunks_per_s: float = 0.0
    cpu_ms_per_chunk: dict[str, float] = field(default_factory=dict)
    upstream_direct_cpu_ms_per_chunk: float | None = None
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    gap_p50_ms: float | None = None
    gap_p99_ms: float | None = None
    gap_max_ms: float | None = None
    added_ttft_p50_ms: float | None = None
    added_ttft_p99_ms: float | None = None
    added_gap_p50_ms: float | None = None
    added_gap_p99_ms: float | None = None
    # --- memory after the window: RSS of every process tree, MB
    rss_mb: dict[str, float] = field(default_factory=dict)
    # --- Kyma rows, with --peer: Kyma against each peer in the same scenario
    vs_peer: dict[str, dict[str, float | None]] = field(default_factory=dict)


@dataclass
class Probes:
    pg: bench_db.PostgresProbe | None = None
    redis: bench_db.RedisProbe | None = None


def drain_s(scenario: Scenario, args: argparse.Namespace) -> float:
    """How long requests still running at the end of a window may take before they are cut: a
    gateway that cannot keep up must not stretch a window without bound."""
    return max(args.duration, 2 * scenario.nominal_stream_s)


async def measure(
    stack: Stack,
    target: Target,
    scenario: Scenario,
    args: argparse.Namespace,
    probes: Probes | None = None,
) -> Row:
    # the database and Redis are Kyma's: read around Kyma's windows and the direct ones beside
    probes = probes if probes is not None and target.name in ("direct", "kyma") else Probes()
    raws = prepared(target, request_body(target.model, scenario.stream, scenario.max_tokens))
    concurrency = scenario.concurrency
    drain = drain_s(scenario, args)
    load = dict(host=HOST, port=target.port, stream=scenario.stream, concurrency=concurrency)

    # Paced warm-up with short streams: it warms connections and code, not the pace.
    warm_tokens = PACED_WARMUP_TOKENS if scenario.mode == "paced" else scenario.max_tokens
    warm = prepared(target, request_body(target.model, scenario.stream, warm_tokens))
    await run_load(
        **load, raw_request=warm, duration_s=args.warmup, max_requests=10**9, drain_s=drain
    )
    profilers = (
        start_profilers(stack, f"{scenario.mode}-{scenario.max_tokens}", concurrency, args)
        if target.name == "kyma"
        else []
    )
    gateways = stack.gateway_processes
    await quiesce(gateways, args.settle)  # warm-up's trailing work stays out
    pg_before = await probes.pg.snapshot() if probes.pg else None  # waits for stats to flush
    redis_before = await probes.redis.snapshot() if probes.redis else None
    pg_cpu = probes.pg.backend_cpu() if probes.pg else None
    pg_cpu_stop = asyncio.Event()
    pg_cpu_task = None
    if pg_cpu is not None:
        pg_cpu.sample()
        pg_cpu_task = asyncio.create_task(pg_cpu.run(pg_cpu_stop))
    pids = stack.processes
    window: dict[str, Any] = {}

    def window_begins() -> None:
        window["load"] = loadavg()
        window["ticks"] = {name: cpu_ticks(pid) for name, pid in pids.items()}
        window["busy"] = machine_busy_ticks()
        window["start"] = time.monotonic()
        window["client"] = time.process_time()

    # Paced streams ramp up over one stream's length first, so that they start and end spread
    # evenly (as a real model's many users do), not all in step; the window begins after that.
    ramp = scenario.nominal_stream_s if scenario.mode == "paced" else 0.0
    if not ramp:
        window_begins()
    result: Result = await run_load(
        **load,
        raw_request=raws,
        duration_s=args.duration,
        max_requests=args.requests,
        drain_s=drain,
        ramp_s=ramp,
        # and at random phases of the token interval (see run_load)
        phase_s=1.0 / scenario.tokens_per_second if ramp else 0.0,
        on_measure=window_begins if ramp else None,
        timeout_s=max(30.0, ramp + args.duration + drain + 5),
    )
    client_cpu = time.process_time() - window["client"]
    load_at_start, before = window["load"], window["ticks"]
    busy_before, window_start = window["busy"], window["start"]
    await quiesce(gateways, args.settle)  # trailing work is gateway cost too
    window_s = time.monotonic() - window_start
    after = {name: cpu_ticks(pid) for name, pid in pids.items()}
    busy_after = machine_busy_ticks()
    pg_ticks, pg_processes = 0, 0
    if pg_cpu is not None and pg_cpu_task is not None:
        pg_cpu_stop.set()
        await pg_cpu_task
        pg_ticks, pg_processes = pg_cpu.total()
    stop_profilers(profilers)
    rss = {name: round(tree_rss_mb(pid)[0], 1) for name, pid in pids.items()}
    redis_cost = None
    if probes.redis and redis_before is not None:
        redis_after = await probes.redis.snapshot()
        others = await probes.redis.other_clients(
            bench_db.local_tcp_ports([stack.core_pid, stack.bridge_pid]),
            redis_after["t"] - redis_before["t"],
        )
        redis_cost = probes.redis.measure(redis_before, redis_after, result.requests, others)
    db_cost = None
    if probes.pg and pg_before is not None:
        pg_after = await probes.pg.snapshot()
        db_cost = await probes.pg.measure(pg_before, pg_after, result.requests)
        db_cost["server_processes_seen"] = pg_processes
    ticks = {name: after[name] - before[name] for name in pids}
    ours = sum(ticks.values()) + client_cpu * CLK_TCK + pg_ticks
    # CPU (in cores) used during the window by everything but the bench's own processes:
    # other work on the machine, which makes a row noisy if it is more than a little.
    foreign_cores = max(0.0, (busy_after - busy_before - ours) / CLK_TCK / window_s)

    n = max(result.requests, 1)
    totals = {name: t * 1000.0 / CLK_TCK for name, t in ticks.items()}
    totals["client"] = client_cpu * 1000.0
    # The bench's processes that carried no load in this window: their background CPU, in cores
    idle = {
        name: ticks[name] / CLK_TCK / window_s
        for name in pids
        if name not in target.processes and name not in ("upstream", "faulty-upstream")
    }
    cpu = {name: total / n for name, total in totals.items() if name not in idle}
    if target.processes:
        totals["gateway"] = sum(totals[name] for name in target.processes)
        cpu["gateway"] = totals["gateway"] / n
        if pg_cpu is not None and pg_processes:
            # the database's own work, which with SQLite is in the core's CPU
            totals["postgres"] = pg_ticks * 1000.0 / CLK_TCK
            cpu["postgres"] = totals["postgres"] / n
            cpu["gateway_and_postgres"] = cpu["gateway"] + cpu["postgres"]
    lat = sorted(result.latencies_ns)
    fb = sorted(result.first_byte_ns)
    row = Row(
        target=target.name,
        mode=scenario.mode,
        concurrency=concurrency,
        requests=result.requests,
        errors=result.errors,
        elapsed_s=result.elapsed_s,
        rps=result.ok / result.elapsed_s if result.elapsed_s else 0.0,
        p50_ms=percentile(lat, 50) / 1e6,
        p99_ms=percentile(lat, 99) / 1e6,
        first_byte_p50_ms=percentile(fb, 50) / 1e6,
        accounts=len(raws),
        cpu_ms_per_req=cpu,
        error_samples=result.error_samples,
        foreign_cpu_cores=foreign_cores,
        kyma_idle_cpu_cores=(
            {k: v for k, v in idle.items() if k in ("core", "bridge")}
            if target.name == "direct"
            else {}
        ),
        db=db_cost,
        redis=redis_cost,
        scenario=scenario.label,
        max_tokens=scenario.max_tokens,
        tokens_per_second=scenario.tokens_per_second,
        ok=result.ok,
        cut=result.cut,
        window_s=window_s,
        loadavg=load_at_start,
        idle_cpu_cores=idle,
        cpu_ms_total=totals,
        rss_mb=rss,
    )
    if scenario.stream:
        add_stream_figures(row, result)
    return row


def add_stream_figures(row: Row, result: Result) -> None:
    row.chunks = result.chunks
    row.chunks_per_s = result.chunks / result.elapsed_s if result.elapsed_s else 0.0
    if result.chunks:
        row.cpu_ms_per_chunk = {
            name: total / result.chunks
            for name, total in row.cpu_ms_total.items()
            if name not in row.idle_cpu_cores
        }
    ttft = sorted(result.first_token_ns)
    gaps = sorted(result.gaps_ns)
    if ttft:
        row.ttft_p50_ms = percentile(ttft, 50) / 1e6
        row.ttft_p99_ms = percentile(ttft, 99) / 1e6
    if gaps:
        row.gap_p50_ms = percentile(gaps, 50) / 1e6
        row.gap_p99_ms = percentile(gaps, 99) / 1e6
        row.gap_max_ms = gaps[-1] / 1e6


def compare(rows: Sequence[Row]) -> None:
    """Fill in what each row of one scenario is against the direct row (the upstream's own cost,
    added latency, throughput ratio) and Kyma's row against each peer's."""
    by_target = {row.target: row for row in rows}
    direct = by_target.get("direct")
    if direct is None:
        return
    up_req = direct.cpu_ms_per_req.get("upstream")
    up_chunk = direct.cpu_ms_per_chunk.get("upstream")
    for row in rows:
        row.upstream_direct_cpu_ms_per_req = up_req
        row.upstream_direct_cpu_ms_per_chunk = up_chunk if row.mode != "nonstream" else None
        if row is direct:
            continue
        row.gateway_per_upstream_cpu = ratio(row.cpu_ms_per_req.get("gateway"), up_req)
        row.added_p50_ms = row.p50_ms - direct.p50_ms
        row.rps_ratio = row.rps / direct.rps if direct.rps else None
        row.added_ttft_p50_ms = difference(row.ttft_p50_ms, direct.ttft_p50_ms)
        row.added_ttft_p99_ms = difference(row.ttft_p99_ms, direct.ttft_p99_ms)
        row.added_gap_p50_ms = difference(row.gap_p50_ms, direct.gap_p50_ms)
        row.added_gap_p99_ms = difference(row.gap_p99_ms, direct.gap_p99_ms)
    kyma = by_target.get("kyma")
    if kyma is None:
        return
    if kyma.db and direct.db and direct.db["window_s"] > 0:
        # The direct window is one with Kyma idle: the core's background database work.
        d = direct.db["delta"]
        kyma.db["background_xacts_per_s"] = (d["xact_commit"] + d["xact_rollback"]) / direct.db[
            "window_s"
        ]
    for peer in bench_peer.PEERS:
        other = by_target.get(peer)
        if other is None:
            continue
        kyma.vs_peer[peer] = {
            # how many times less CPU Kyma spends, and how many times its throughput
            "cpu_ratio": ratio(
                other.cpu_ms_per_req.get("gateway"), kyma.cpu_ms_per_req.get("gateway")
            ),
            "rps_ratio": ratio(kyma.rps, other.rps),
            "cpu_per_chunk_ratio": ratio(
                other.cpu_ms_per_chunk.get("gateway"), kyma.cpu_ms_per_chunk.get("gateway")
            ),
        }


def stream_fits(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Each gateway's (and the direct upstream's own) fixed cost per stream and cost per chunk,
    fitted over the unpaced stream rows of one concurrency (two or more lengths)."""
    fits = []
    groups: dict[tuple[str, int], list[Row]] = {}
    for row in rows:
        if row.mode == "stream":
            groups.setdefault((row.target, row.concurrency), []).append(row)
    for (target, concurrency), group in groups.items():
        process = "upstream" if target == "direct" else "gateway"
        windows = [
            StreamWindow(row.requests, row.chunks, row.cpu_ms_total.get(process, 0.0), row.cut)
            for row in group
        ]
        cost, note = judge_stream_cost(windows)
        fits.append(
            {
                "target": target,
                "process": process,
                "concurrency": concurrency,
                "lengths": sorted({row.max_tokens for row in group}),
                "windows": [asdict(w) for w in windows],
                "fixed_ms_per_stream": cost.fixed_ms if cost else None,
                "cpu_ms_per_chunk": cost.per_chunk_ms if cost else None,
                "note": note,
            }
        )
    return fits


async def quiesce(pids: Sequence[int], settle: float, limit: float = 15.0) -> None:
    """Wait until the gateways are idle: at least `settle` seconds, then until together they
    burn at most 1 clock tick in 200 ms (background work such as hold settlement trailing the
    responses is the gateway's cost too, and must not leak into the next window)."""
    await asyncio.sleep(settle)
    deadline = time.monotonic() + limit
    last = sum(cpu_ticks(pid) for pid in pids)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        now = sum(cpu_ticks(pid) for pid in pids)
        if now - last <= 1:
            return
        last = now
    print(f"bench: gateways still busy {limit:.0f}s after the load stopped", file=sys.stderr)


def start_profilers(
    stack: Stack, mode: str, concurrency: int, args: argparse.Namespace
) -> list[subprocess.Popen[bytes]]:
    """py-spy on the core and the bridge for the measured window (--profile). It samples from
    outside the processes but takes CPU of its own: profiled runs' latencies are not comparable."""
    if not args.profile:
        return []
    args.profile.mkdir(parents=True, exist_ok=True)
    started = []
    for name, pid in (("core", stack.core_pid), ("bridge", stack.bridge_pid)):
        out = args.profile / f"{mode}-c{concurrency}-{name}.txt"
        started.append(
            subprocess.Popen(
                [
                    args.py_spy,
                    "record",
                    "-p",
                    str(pid),
                    "-r",
                    "200",
                    "-f",
                    "raw",
                    "-o",
                    str(out),
                    "--nonblocking",
                    # With workers, the pid is the tree's parent: sample its children too.
                    *(["--subprocesses"] if (args.workers or 1) > 1 else []),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
    time.sleep(1.0)  # attaching takes a moment
    return started


def stop_profilers(profilers: list[subprocess.Popen[bytes]]) -> None:
    for proc in profilers:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output when interrupted
    for proc in profilers:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def run_all(
    stack: Stack, args: argparse.Namespace, db: bench_db.BenchDatabase | None = None
) -> tuple[list[Row], dict[str, Any] | None]:
    probes = Probes()
    try:
        if db is not None:
            probes.pg = bench_db.PostgresProbe(db, args.pg_stats_wait)
            await probes.pg.open()
        if args.redis_url:
            probes.redis = bench_db.RedisProbe(args.redis_url)
            await probes.redis.open()
        rows = await run_scenarios(stack, args, probes)
        soak = None
        if args.soak:
            kyma = next(t for t in stack.targets() if t.name == "kyma")
            soak = await bench_soak.soak(
                port=kyma.port,
                plain=prepared(kyma, request_body(kyma.model, False)),
                stream=prepared(kyma, request_body(kyma.model, True)),
                processes=stack.processes,
                minutes=args.soak,
                interval_s=args.soak_interval,
                concurrency=args.soak_concurrency,
            )
        return rows, soak
    finally:
        if probes.pg:
            await probes.pg.close()
        if probes.redis:
            await probes.redis.close()


async def run_scenarios(stack: Stack, args: argparse.Namespace, probes: Probes) -> list[Row]:
    rows: list[Row] = []
    targets = stack.targets()
    for scenario in scenarios(args):
        if scenario.tokens_per_second:
            set_upstream_pacing(stack, scenario.tokens_per_second)
        try:
            group = []
            for target in targets:
                row = await measure(stack, target, scenario, args, probes)
                group.append(row)
                rows.append(row)
                print(progress_line(row), file=sys.stderr, flush=True)
                for sample in row.error_samples:
                    print(f"    error: {sample}", file=sys.stderr)
                if target.name == "kyma":
                    print_costs(row)
        finally:
            if scenario.tokens_per_second:
                set_upstream_pacing(stack, args.upstream_tokens_per_second)
        compare(group)
    return rows


def progress_line(row: Row) -> str:
    line = (
        f"  {row.target:7} {row.scenario:22} c={row.concurrency:<3} {row.requests:6} req  "
        f"{row.errors} err  {row.rps:8.1f} req/s  p50 {row.p50_ms:8.2f} ms"
    )
    if row.cut:
        line += f"  {row.cut} cut"
    gateway = row.cpu_ms_per_req.get("gateway")
    if gateway is not None:
        line += f"  gateway {gateway:.2f} ms cpu/req"
    if row.foreign_cpu_cores > 0.15:
        line += f"  (other load on the machine: {row.foreign_cpu_cores:.2f} cores)"
    return line


def print_costs(row: Row) -> None:
    if row.db:
        per = row.db["per_request"]
        print(
            f"    postgres per request: {per['transactions']:.2f} xact "
            f"({per['rollbacks']:.2f} rollbacks), {per['rows_written']:.2f} rows written, "
            f"{per['wal_bytes']:.0f} WAL bytes, {per['request_log_bytes']:.0f} request-log bytes"
            + (f", {per['statements']:.2f} statements" if per["statements"] is not None else "")
            + (
                f"  (other databases: {row.db['other_databases_xacts']} xact in the window)"
                if row.db["other_databases_xacts"] > 20
                else ""
            ),
            file=sys.stderr,
            flush=True,
        )
        log = row.db.get("server_log") or {}
        for sample in log.get("error_samples", []):
            print(f"    postgres log: {sample}", file=sys.stderr)
    if row.redis:
        per = row.redis["per_request"]
        print(
            f"    redis per request: {per['commands']:.2f} commands ({per['scripts']:.2f} scripts), "
            f"{per['cpu_us']:.1f} us CPU"
            + (
                f"  (other redis clients active: {len(row.redis['other_clients_active'])})"
                if row.redis["other_clients_active"]
                else ""
            ),
            file=sys.stderr,
            flush=True,
        )


# --- logs -----------------------------------------------------------------------------------

_LOG_PROBLEM = re.compile(
    r"^(?:\S+ \S+ )?(WARNING|ERROR|CRITICAL)[: ]|^Traceback|^\w*(?:Error|Exception):"
)


def log_findings(procs: Processes, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Warnings, errors and tracebacks in the children's logs."""
    found: dict[str, dict[str, Any]] = {}
    for name in names:
        counts: dict[str, int] = {}
        samples: list[str] = []
        for line in procs.log(name).splitlines():
            match = _LOG_PROBLEM.search(line)
            if not match:
                continue
            level = match.group(1) or ("Traceback" if line.startswith("Traceback") else "exception")
            counts[level] = counts.get(level, 0) + 1
            if len(samples) < 8 and line[:200] not in samples:
                samples.append(line[:200])
        if counts:
            found[name] = {"counts": counts, "samples": samples}
    return found


def keep_logs(workdir: pathlib.Path, dest: pathlib.Path) -> pathlib.Path | None:
    logs = sorted(workdir.glob("*.log"))
    if not logs:
        return None
    dest.mkdir(parents=True, exist_ok=True)
    for log in logs:
        shutil.copy2(log, dest / log.name)
    return dest


def git_revision() -> str | None:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
        )
        return (
            rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
            if rev.returncode == 0
            else None
        )
    except OSError:
        return None


# --- main -----------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Gateway overhead: the test upstream directly vs. through Kyma (and a peer "
        "gateway with --peer), non-streaming, streaming and paced like a real model, in one run.",
        epilog="A full comparison on a quiet machine: scripts/bench --peer litellm; add --soak "
        "for the memory soak (10 minutes). --quick runs every scenario briefly (and a 15 s soak).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of everything: 0.3 s warm-up, 1.5 s per window, short streams "
        "(--stream-tokens 16,64), 20 paced streams of 50 tokens, a 15 s soak sampled every 3 s",
    )
    parser.add_argument(
        "--duration", type=float, help="measured seconds per window (default 8, quick 1.5)"
    )
    parser.add_argument(
        "--warmup", type=float, help="warm-up seconds per window (default 2, quick 0.3)"
    )
    parser.add_argument(
        "--requests",
        type=int,
        help="at most this many measured requests per window (default 20000, quick 3000)",
    )
    parser.add_argument(
        "--concurrency",
        default="1,32",
        help="comma-separated concurrencies of the nonstream and stream scenarios (default 1,32)",
    )
    parser.add_argument(
        "--modes",
        default="nonstream,stream,paced",
        help="comma-separated scenarios to run, of nonstream,stream,paced (default all; 'none' "
        "for only the soak)",
    )
    parser.add_argument(
        "--stream-tokens",
        metavar="N,M",
        help="tokens per stream of the unpaced stream scenarios, two or more lengths to fit the "
        "fixed cost per stream and the cost per chunk (default 16,128, quick 16,64)",
    )
    parser.add_argument(
        "--paced-streams",
        type=int,
        metavar="N",
        help="concurrent streams of the paced scenario (default 200, quick 20)",
    )
    parser.add_argument(
        "--paced-tps",
        type=float,
        default=50.0,
        metavar="TPS",
        help="tokens per second of each paced stream, as the test upstream writes them "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--paced-tokens",
        type=int,
        metavar="N",
        help="tokens per paced stream (default 300, quick 50)",
    )
    parser.add_argument(
        "--peer",
        choices=bench_peer.PEERS,
        help="also measure this gateway in front of the same upstream, with the same load: "
        f"litellm = LiteLLM's proxy {bench_peer.LITELLM_VERSION}, one worker, offline, installed "
        "by the bench on first use into its cache dir",
    )
    parser.add_argument(
        "--cache-dir",
        type=pathlib.Path,
        default=bench_peer.default_cache_dir(),
        help="where the bench installs the peer (default $KYMA_TEST_CACHE/bench or "
        "~/.cache/kyma/bench: %(default)s)",
    )
    parser.add_argument(
        "--soak",
        type=float,
        nargs="?",
        const=10.0,
        metavar="MINUTES",
        help="after the scenarios, keep a steady load on Kyma this long (default 10; quick 0.25; "
        "0 for none) and sample every process's RSS; reports the series and whether the last 5 "
        "minutes are flat",
    )
    parser.add_argument(
        "--soak-interval",
        type=float,
        metavar="S",
        help="seconds between RSS samples in the soak (default 10, quick 3)",
    )
    parser.add_argument(
        "--soak-concurrency",
        type=int,
        default=16,
        metavar="N",
        help="connections of the soak load, half non-streaming, half streaming (default "
        "%(default)s)",
    )
    parser.add_argument("--upstream-latency-ms", type=float, default=0.0)
    parser.add_argument(
        "--upstream-tokens-per-second",
        type=float,
        default=0.0,
        help="pace of every stream outside the paced scenario (default 0: as fast as it can)",
    )
    parser.add_argument(
        "--json",
        type=pathlib.Path,
        help="where to write the JSON results (default bench-results/<timestamp>.json)",
    )
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        help="add a second deployment failing this share of requests with 500s",
    )
    parser.add_argument(
        "--redis-url",
        help="count rate limits in this Redis (default: in-process); reports Redis commands and "
        "CPU per request",
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="a PostgreSQL server (admin URL, e.g. postgresql://postgres@127.0.0.1:5432/test): the "
        "bench creates a fresh database kyma_bench_<random> in it, runs the core on it, drops it "
        "at the end, and reports the database's work per request (default: SQLite in the work dir)",
    )
    parser.add_argument(
        "--pg-stats-wait",
        type=float,
        default=bench_db.DEFAULT_STATS_WAIT_S,
        metavar="S",
        help="seconds to wait after Kyma went idle before reading PostgreSQL's statistics "
        "(idle backends flush theirs up to 10 s late on PostgreSQL 15; default %(default)s)",
    )
    parser.add_argument(
        "--pg-log",
        metavar="PATH",
        help="the PostgreSQL server's log file: report the bench database's errors from it",
    )
    parser.add_argument(
        "--pg-count-statements",
        action="store_true",
        help="with --pg-log and without pg_stat_statements: log every statement of the bench "
        "database (log_statement=all, for it alone) and count them; costs PostgreSQL CPU",
    )
    accounts = parser.add_mutually_exclusive_group()
    accounts.add_argument(
        "--one-account",
        action="store_true",
        help="every request of a scenario from one account (one API key on all connections); "
        "this is the default, the flag makes it explicit",
    )
    accounts.add_argument(
        "--accounts",
        type=int,
        default=1,
        metavar="N",
        help="spread the connections over N accounts (connection i uses account i mod N; "
        "default 1)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="Kyma as KYMA_WORKERS=N runs it: N cores and N bridges (two process trees; their "
        "CPU and RSS are counted whole). Default 1: one core and one bridge process",
    )
    parser.add_argument(
        "--cpus-per-worker",
        type=float,
        metavar="Q",
        help="cap Kyma's processes (core and bridge trees together) at Q CPUs per worker with a "
        "cgroup CPU quota, leaving the rest of the machine to the upstream and the load "
        "generator: compare --workers 1 and 2 at the same Q to see how Kyma scales with the "
        "CPUs it is given on a machine too small to run them elsewhere (needs a writable "
        "cgroup; see scripts/bench_cgroup.py)",
    )
    parser.add_argument(
        "--core-env",
        action="append",
        default=[],
        metavar="KYMA_NAME=VALUE",
        help="an extra setting for the core and the bridge, e.g. KYMA_DATABASE_POOL_SIZE=20 "
        "(repeatable)",
    )
    parser.add_argument(
        "--log-level", help="KYMA_LOG_LEVEL of core and bridge (default: Kyma's own)"
    )
    parser.add_argument(
        "--profile",
        type=pathlib.Path,
        metavar="DIR",
        help="record py-spy profiles (collapsed stacks) of core and bridge during Kyma windows into DIR",
    )
    parser.add_argument(
        "--py-spy",
        default=shutil.which("py-spy") or "py-spy",
        help="py-spy executable for --profile",
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep the temp dir (logs, db)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.duration = args.duration if args.duration is not None else (1.5 if quick else 8.0)
    args.warmup = args.warmup if args.warmup is not None else (0.3 if quick else 2.0)
    args.requests = args.requests if args.requests is not None else (3000 if quick else 20000)
    args.settle = 0.3
    try:
        args.concurrency = int_list(args.concurrency)
        args.stream_tokens = int_list(args.stream_tokens or ("16,64" if quick else "16,128"))
    except ValueError:
        parser.error("--concurrency and --stream-tokens take comma-separated integers, e.g. 1,32")
    if not args.concurrency or min(args.concurrency) < 1:
        parser.error("--concurrency needs positive integers")
    if not args.stream_tokens or min(args.stream_tokens) < 1:
        parser.error("--stream-tokens needs positive integers")
    args.stream_tokens = sorted(set(args.stream_tokens))
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.modes = [] if modes == ["none"] else modes
    if any(m not in MODES for m in args.modes) or (not args.modes and modes != ["none"]):
        parser.error(f"--modes takes a comma-separated subset of {','.join(MODES)}, or none")
    if args.paced_streams is None:
        args.paced_streams = 20 if quick else 200
    if args.paced_tokens is None:
        args.paced_tokens = 50 if quick else 300
    if args.paced_streams < 1 or args.paced_tokens < 1 or args.paced_tps <= 0:
        parser.error("--paced-streams, --paced-tokens and --paced-tps must be positive")
    if args.soak is None:
        args.soak = 0.25 if quick else 0.0
    if args.soak_interval is None:
        args.soak_interval = 3.0 if quick else 10.0
    if args.soak < 0 or args.soak_interval <= 0 or args.soak_concurrency < 2:
        parser.error(
            "--soak must not be negative, --soak-interval positive, --soak-concurrency >= 2"
        )
    if not args.modes and not args.soak:
        parser.error("--modes none leaves only the soak: give --soak MINUTES")
    if args.duration <= 0 or args.warmup < 0 or args.requests < 1:
        parser.error("--duration and --requests must be positive, --warmup not negative")
    if args.workers < 1:
        parser.error("--workers takes a positive number")
    if args.cpus_per_worker is not None and not 0 < args.cpus_per_worker <= (os.cpu_count() or 1):
        parser.error("--cpus-per-worker takes a positive number of CPUs, at most the machine's")
    if args.one_account:
        args.accounts = 1
    if args.accounts < 1:
        parser.error("--accounts needs a positive number")
    core_env = {}
    for item in args.core_env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("KYMA_"):
            parser.error(f"--core-env takes KYMA_NAME=VALUE, not {item!r}")
        core_env[name] = value
    args.core_env = core_env
    if args.database_url and not args.database_url.startswith(("postgresql", "postgres:")):
        parser.error("--database-url takes a postgresql:// URL (SQLite is the default)")
    if args.pg_count_statements and not args.pg_log:
        parser.error("--pg-count-statements needs --pg-log")
    if args.pg_log and not os.access(args.pg_log, os.R_OK):
        parser.error(f"--pg-log {args.pg_log}: not readable")
    if args.pg_stats_wait < 0:
        parser.error("--pg-stats-wait must not be negative")
    args.peer_venv = None
    return args


def machine() -> dict[str, Any]:
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                None,
            )
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM ends the bench like Ctrl-C does: through the finally below, which stops the children
    # (SIGINT too when a non-interactive shell started the bench in the background ignoring it).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = dt.datetime.now(dt.UTC)
    out = args.json or ROOT / "bench-results" / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    logs_dir = out.with_name(out.stem + "-logs")
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="kyma-bench-"))
    procs = Processes(workdir, ROOT)
    db: bench_db.BenchDatabase | None = None
    findings: dict[str, dict[str, Any]] = {}
    kept: pathlib.Path | None = None
    stack: Stack | None = None
    budget: CpuBudget | None = None
    throttled: float | None = None  # seconds the budget held Kyma back (--cpus-per-worker)
    try:
        if args.cpus_per_worker is not None:
            budget = CpuBudget.create(args.cpus_per_worker * args.workers)
            print(
                f"bench: Kyma's processes capped at {budget.cpus:g} CPUs (cgroup v{budget.version} "
                f"{budget.path})",
                file=sys.stderr,
                flush=True,
            )
        if args.peer == "litellm":
            # installed before anything starts: a first install takes minutes, and is not timed
            args.peer_venv = bench_peer.ensure_litellm(args.cache_dir)
        print(
            f"bench: starting test upstream, core and bridge{' and ' + args.peer if args.peer else ''} "
            f"(work dir {workdir})",
            file=sys.stderr,
            flush=True,
        )
        if args.database_url:
            db = bench_db.create_database(
                args.database_url, pg_log=args.pg_log, count_statements=args.pg_count_statements
            )
            print(
                f"bench: PostgreSQL {db.server_version}: database {db.name}; "
                f"statements: {db.statements_note}; {db.walinspect_note}",
                file=sys.stderr,
                flush=True,
            )
        stack = start_stack(procs, args, db.url if db else None, budget)
        peer_note = (
            f", {stack.peer.name} :{stack.peer.port} (pid {stack.peer.pid}, ready in "
            f"{stack.peer.started_s:.0f}s)"
            if stack.peer
            else ""
        )
        print(
            f"bench: upstream :{stack.upstream_port} (pid {stack.upstream_pid}), core pid {stack.core_pid}, "
            f"bridge :{stack.bridge_port} (pid {stack.bridge_pid}){peer_note}; core listening "
            f"after {stack.startup['core_listening_s']:.1f}s, bridge ready "
            f"{stack.startup['bridge_ready_s']:.1f}s later; "
            f"{args.warmup:g}s warm-up + {args.duration:g}s (<= {args.requests} req) per window; "
            + bench_report.load_line(args),
            file=sys.stderr,
            flush=True,
        )
        loadavg_start = loadavg()
        trees = {name: tree_rss_mb(pid) for name, pid in stack.processes.items()}
        rss_start = {name: round(mb, 1) for name, (mb, _count) in trees.items()}
        process_trees = {
            name: {"pid": stack.processes[name], "processes": count}
            for name, (_mb, count) in trees.items()
        }
        rows, soak = uvloop.run(run_all(stack, args, db))
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    except (
        RuntimeError,
        OSError,
        subprocess.CalledProcessError,
        bench_db.asyncpg.PostgresError,
    ) as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    finally:
        if budget is not None:
            throttled = budget.throttled_s()
        procs.stop_all()
        if budget is not None:
            budget.remove()
        findings = log_findings(procs, ("core", "bridge", "upstream", "faulty-upstream", "litellm"))
        kept = keep_logs(workdir, logs_dir)
        if db is not None:
            try:
                bench_db.drop_database(db)
            except (OSError, bench_db.asyncpg.PostgresError) as error:
                print(f"bench: could not drop database {db.name}: {error}", file=sys.stderr)
        if args.keep_workdir:
            print(f"bench: kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    fits = stream_fits(rows)
    now = dt.datetime.now(dt.UTC)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "timestamp": now.isoformat(),
        "git": git_revision(),
        "command": "scripts/bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {
            **machine(),
            "loadavg_at_start": loadavg_start,
            "loadavg_at_end": loadavg(),
        },
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "max_requests": args.requests,
            "concurrency": args.concurrency,
            "workers": args.workers,
            "cpus_per_worker": args.cpus_per_worker,
            "cpu_throttled_s": throttled,
            "modes": args.modes,
            "stream_tokens": args.stream_tokens,
            "paced": {
                "streams": args.paced_streams,
                "tokens_per_second": args.paced_tps,
                "tokens": args.paced_tokens,
            },
            "upstream_latency_ms": args.upstream_latency_ms,
            "upstream_tokens_per_second": args.upstream_tokens_per_second,
            "kyma_log_level": args.log_level,
            "max_tokens": MAX_TOKENS,
            "clk_tck": CLK_TCK,
            "accounts": args.accounts,
            "one_account": args.accounts == 1,
            "load": bench_report.load_line(args),
            "database": db.describe() if db else {"kind": "sqlite (work dir)"},
            "pg_stats_wait_s": args.pg_stats_wait if db else None,
            "redis_url": bench_db.redact(args.redis_url) if args.redis_url else None,
            "core_env": args.core_env,
            "soak": {
                "minutes": args.soak,
                "interval_s": args.soak_interval,
                "concurrency": args.soak_concurrency,
            },
        },
        "peer": (
            {
                "name": stack.peer.name,
                "version": stack.peer.version,
                "spec": bench_peer.LITELLM_SPEC,
                "venv": str(args.peer_venv),
                "workers": 1,
                "ready_after_s": stack.peer.started_s,
            }
            if stack is not None and stack.peer is not None
            else None
        ),
        "process_trees": process_trees,
        "startup_s": stack.startup if stack is not None else None,
        "rss_mb_at_start": rss_start,
        "logs": str(kept) if kept else None,
        "log_findings": findings,
        "rows": [asdict(r) for r in rows],
        "stream_fits": fits,
        "soak": soak,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    sys.stderr.flush()
    print()
    print(bench_report.render(rows, fits, soak, args, db))
    print(f"\nJSON: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    if kept:
        print(f"logs: {kept.relative_to(ROOT) if kept.is_relative_to(ROOT) else kept}")
    for name, found in findings.items():
        counts = ", ".join(f"{n} {level}" for level, n in found["counts"].items())
        print(f"bench: {name}.log has {counts}; first:", file=sys.stderr)
        for sample in found["samples"]:
            print(f"    {sample}", file=sys.stderr)
    errors = sum(r.errors for r in rows) + (soak["errors"] if soak else 0)
    if errors:
        print(f"bench: {errors} request(s) failed; see error samples above", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
