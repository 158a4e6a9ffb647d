"""Kyma's gateway overhead benchmark: the same requests sent straight to a test upstream and
through Kyma (bridge -> core -> upstream), side by side, in one run.

It starts a test upstream, a Kyma core and a Kyma bridge as separate processes (fresh data dir,
free loopback ports), creates an account, and for each mode x concurrency runs a warm-up then a
measured window against (a) the upstream directly and (b) Kyma. For Kyma rows it reads the CPU
time (utime+stime from /proc/<pid>/stat) the core and the bridge spent in the measured window and
divides it by the number of requests: the gateway's own cost per request.

By default every request comes from one account (one API key, all connections); `--accounts N`
spreads the connections over N accounts (connection i uses account i mod N). The database is a
SQLite file in the work dir unless `--database-url` names a PostgreSQL server: then the bench makes
a fresh database in it for the run (dropped at the end) and, around each window, reads what that
database did (transactions, rows written, WAL, statements if it can: see bench_db.py), per
request. With `--redis-url`, likewise Redis's commands and CPU per request. The core's, the
bridge's and the upstream's logs are kept next to the JSON (<json>-logs/) and their warnings and
errors are summed up at the end.

Prints a markdown table and writes JSON to bench-results/<timestamp>.json (or --json PATH).
Run it through ./scripts/bench.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import ctypes
import datetime as dt
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvloop

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_db  # noqa: E402
from bench_client import Result, build_request, percentile, run_load  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
VENV_BIN = pathlib.Path(sys.executable).parent
KYMA = str(VENV_BIN / "kyma")
HOST = "127.0.0.1"
PUBLIC_MODEL = "bench-model"
UPSTREAM_MODEL = "upstream-model"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MODES = ("nonstream", "stream")


# --- processes ------------------------------------------------------------------------------


def cpu_ticks(pid: int) -> int:
    """utime + stime of a whole process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def machine_busy_ticks() -> int:
    """Busy clock ticks of all CPUs together (aggregate line of /proc/stat), for spotting load
    from outside the bench during a window."""
    with open("/proc/stat", "rb") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return user + nice + system + irq + softirq + steal


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the bench dies without cleaning up (SIGKILL)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Processes:
    """Child processes, each in its own session (so a Ctrl-C reaches only the bench, which
    then stops them in order), with output going to log files in the work dir."""

    def __init__(self, workdir: pathlib.Path) -> None:
        self.workdir = workdir
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()
        self.children.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_line(
        self, name: str, proc: subprocess.Popen[bytes], pattern: str, timeout: float
    ) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            match = regex.search(self.log(name))
            if match:
                return match
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(
            f"{name} did not start (exit {proc.poll()}); its output:\n{self.log(name)[-3000:]}"
        )

    def stop_all(self) -> None:
        for _name, proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _name, proc in reversed(self.children):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.children.clear()


def http_get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_get(url) == 200:
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"{what}: {url} did not answer 200 within {timeout:.0f}s")


@dataclass
class Stack:
    upstream_pid: int
    upstream_port: int
    core_pid: int
    bridge_pid: int
    bridge_port: int
    api_keys: list[str]


def start_stack(
    procs: Processes, args: argparse.Namespace, database_url: str | None = None
) -> Stack:
    workdir = procs.workdir
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("KYMA_")}

    # 1. the test upstream
    upstream_argv = [KYMA, "test-upstream"]
    if subprocess.run([KYMA, "test-upstream", "--help"], capture_output=True).returncode != 0:
        upstream_argv = [sys.executable, "-m", "core_service.simulators.test_upstream.server"]
    upstream = procs.start(
        "upstream",
        [
            *upstream_argv,
            "--host",
            HOST,
            "--port",
            "0",
            "--latency-ms",
            str(args.upstream_latency_ms),
            "--tokens-per-second",
            str(args.upstream_tokens_per_second),
        ],
        base_env,
    )
    match = procs.wait_for_line(
        "upstream", upstream, r"test-upstream listening on http://[^:\s]+:(\d+)", 30
    )
    upstream_port = int(match.group(1))
    faulty_deployment = ""
    if args.fault_rate:
        # A second deployment of the same model that fails a share of its requests with 500s.
        faulty = procs.start(
            "faulty-upstream",
            [
                *upstream_argv,
                "--host",
                HOST,
                "--port",
                "0",
                "--latency-ms",
                str(args.upstream_latency_ms),
                "--tokens-per-second",
                str(args.upstream_tokens_per_second),
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
        faulty_deployment = (
            "      - name: upstream-faulty\n"
            f"        base_url: http://{HOST}:{faulty_match.group(1)}/v1\n"
            f"        model: {UPSTREAM_MODEL}\n"
        )

    # 2. Kyma core and bridge, as two processes so each one's CPU can be read
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
    grpc_port, http_port = free_port(), free_port()
    env = {
        **base_env,
        "KYMA_DATA_DIR": str(workdir / "data"),
        "KYMA_GRPC_HOST": HOST,
        "KYMA_GRPC_PORT": str(grpc_port),
        "KYMA_HTTP_HOST": HOST,
        "KYMA_HTTP_PORT": str(http_port),
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
    core = procs.start("core", [KYMA, "serve", "core"], env)
    procs.wait_for_line("core", core, r"kyma core listening on", 60)
    bridge = procs.start("bridge", [KYMA, "serve", "bridge"], env)
    procs.wait_for_line("bridge", bridge, r"kyma bridge listening on", 60)
    wait_http(f"http://{HOST}:{http_port}/healthz", bridge, "bridge", 30)
    wait_http(f"http://{HOST}:{http_port}/readyz", bridge, "bridge (core reachable)", 30)

    # 3. the accounts and their keys (unique emails per run)
    run_id = uuid.uuid4().hex[:12]
    emails = [f"bench+{run_id}-{i}@example.com" for i in range(args.accounts)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        api_keys = list(pool.map(lambda email: create_account(env, email), emails))

    return Stack(upstream.pid, upstream_port, core.pid, bridge.pid, http_port, api_keys)


def create_account(env: dict[str, str], email: str) -> str:
    """A new account with one API key; returns the key."""
    created = subprocess.run(
        [KYMA, "admin", "accounts", "create", email, "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if created.returncode != 0:
        raise RuntimeError(f"kyma admin accounts create failed:\n{created.stdout}{created.stderr}")
    prepare_account(env, email)
    return str(json.loads(created.stdout)["api_key_secret"])


def prepare_account(env: dict[str, str], email: str) -> None:
    """Make the bench account able to carry the load: the environment above already gives it
    a large welcome bonus and a tier table whose limits never refuse (while still counting)."""
    return None


# --- scenarios ------------------------------------------------------------------------------


def request_body(model: str, stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello in a few words."},
        ],
        "max_tokens": 16,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


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
    cpu_ms_per_req: dict[str, float] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    foreign_cpu_cores: float = 0.0
    kyma_idle_cpu_cores: dict[str, float] = field(default_factory=dict)  # direct rows only
    added_p50_ms: float | None = None
    rps_ratio: float | None = None
    # What PostgreSQL (--database-url) and Redis (--redis-url) did in the window: see bench_db.py
    db: dict[str, Any] | None = None
    redis: dict[str, Any] | None = None


@dataclass
class Probes:
    pg: bench_db.PostgresProbe | None = None
    redis: bench_db.RedisProbe | None = None


async def measure(
    stack: Stack,
    target: str,
    mode: str,
    concurrency: int,
    args: argparse.Namespace,
    probes: Probes | None = None,
) -> Row:
    probes = probes or Probes()
    stream = mode == "stream"
    body = request_body(PUBLIC_MODEL if target == "kyma" else UPSTREAM_MODEL, stream)
    if target == "direct":
        port = stack.upstream_port
        raws = [build_request(HOST, port, "/v1/chat/completions", body, {})]
    else:
        port = stack.bridge_port
        raws = [
            build_request(
                HOST, port, "/v1/chat/completions", body, {"Authorization": f"Bearer {key}"}
            )
            for key in stack.api_keys
        ]
    load = dict(host=HOST, port=port, raw_request=raws, stream=stream, concurrency=concurrency)

    await run_load(**load, duration_s=args.warmup, max_requests=10**9)
    profilers = start_profilers(stack, mode, concurrency, args) if target == "kyma" else []
    pids = {"core": stack.core_pid, "bridge": stack.bridge_pid, "upstream": stack.upstream_pid}
    await quiesce(
        [stack.core_pid, stack.bridge_pid], args.settle
    )  # warm-up's trailing work stays out
    pg_before = await probes.pg.snapshot() if probes.pg else None  # waits for stats to flush
    redis_before = await probes.redis.snapshot() if probes.redis else None
    pg_cpu = probes.pg.backend_cpu() if probes.pg else None
    pg_cpu_stop = asyncio.Event()
    pg_cpu_task = None
    if pg_cpu is not None:
        pg_cpu.sample()
        pg_cpu_task = asyncio.create_task(pg_cpu.run(pg_cpu_stop))
    before = {name: cpu_ticks(pid) for name, pid in pids.items()}
    busy_before = machine_busy_ticks()
    window_start = time.monotonic()
    client_before = time.process_time()
    result: Result = await run_load(**load, duration_s=args.duration, max_requests=args.requests)
    client_cpu = time.process_time() - client_before
    await quiesce(
        [stack.core_pid, stack.bridge_pid], args.settle
    )  # trailing work is gateway cost too
    window_s = time.monotonic() - window_start
    after = {name: cpu_ticks(pid) for name, pid in pids.items()}
    busy_after = machine_busy_ticks()
    pg_ticks, pg_processes = 0, 0
    if pg_cpu is not None and pg_cpu_task is not None:
        pg_cpu_stop.set()
        await pg_cpu_task
        pg_ticks, pg_processes = pg_cpu.total()
    stop_profilers(profilers)
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
    ours = sum(after[name] - before[name] for name in pids) + client_cpu * CLK_TCK + pg_ticks
    # CPU (in cores) used during the window by everything but the bench's own processes:
    # other work on the machine, which makes a row noisy if it is more than a little.
    foreign_cores = max(0.0, (busy_after - busy_before - ours) / CLK_TCK / window_s)

    n = max(result.requests, 1)
    cpu = {name: (after[name] - before[name]) * 1000.0 / CLK_TCK / n for name in pids}
    cpu["client"] = client_cpu * 1000.0 / n
    idle_cores = {}
    if target == "direct":
        # Kyma is idle in this window: its own background CPU, in cores
        idle_cores = {
            name: (after[name] - before[name]) / CLK_TCK / window_s for name in ("core", "bridge")
        }
        cpu.pop("core"), cpu.pop("bridge")
    else:
        cpu["gateway"] = cpu["core"] + cpu["bridge"]
        if pg_cpu is not None and pg_processes:
            # the database's own work, which with SQLite is in the core's CPU
            cpu["postgres"] = pg_ticks * 1000.0 / CLK_TCK / n
            cpu["gateway_and_postgres"] = cpu["gateway"] + cpu["postgres"]
    lat = sorted(result.latencies_ns)
    fb = sorted(result.first_byte_ns)
    return Row(
        target=target,
        mode=mode,
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
        kyma_idle_cpu_cores=idle_cores,
        db=db_cost,
        redis=redis_cost,
    )


async def quiesce(pids: Sequence[int], settle: float, limit: float = 15.0) -> None:
    """Wait until Kyma is idle: at least `settle` seconds, then until core and bridge together
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
    print(f"bench: Kyma still busy {limit:.0f}s after the load stopped", file=sys.stderr)


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
) -> list[Row]:
    probes = Probes()
    try:
        if db is not None:
            probes.pg = bench_db.PostgresProbe(db, args.pg_stats_wait)
            await probes.pg.open()
        if args.redis_url:
            probes.redis = bench_db.RedisProbe(args.redis_url)
            await probes.redis.open()
        return await run_scenarios(stack, args, probes)
    finally:
        if probes.pg:
            await probes.pg.close()
        if probes.redis:
            await probes.redis.close()


async def run_scenarios(stack: Stack, args: argparse.Namespace, probes: Probes) -> list[Row]:
    rows: list[Row] = []
    for mode in args.modes:
        for concurrency in args.concurrency:
            pair = {}
            for target in ("direct", "kyma"):
                row = await measure(stack, target, mode, concurrency, args, probes)
                pair[target] = row
                rows.append(row)
                print(
                    f"  {target:6} {mode:9} c={concurrency:<3} {row.requests:6} req  "
                    f"{row.errors} err  {row.rps:8.1f} req/s  p50 {row.p50_ms:7.2f} ms"
                    + (
                        f"  (other load on the machine: {row.foreign_cpu_cores:.2f} cores)"
                        if row.foreign_cpu_cores > 0.15
                        else ""
                    ),
                    file=sys.stderr,
                    flush=True,
                )
                for sample in row.error_samples:
                    print(f"    error: {sample}", file=sys.stderr)
                if target == "kyma":
                    print_costs(row)
            kyma, direct = pair["kyma"], pair["direct"]
            kyma.added_p50_ms = kyma.p50_ms - direct.p50_ms
            kyma.rps_ratio = kyma.rps / direct.rps if direct.rps else None
            if kyma.db and direct.db and direct.db["window_s"] > 0:
                # The direct window is one with Kyma idle: the core's background database work.
                d = direct.db["delta"]
                kyma.db["background_xacts_per_s"] = (
                    d["xact_commit"] + d["xact_rollback"]
                ) / direct.db["window_s"]
    return rows


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


# --- output ---------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:
        return "–"
    return f"{value:.{digits}f}"


def table(rows: Sequence[Row]) -> str:
    head = (
        "target",
        "mode",
        "conc",
        "requests",
        "errors",
        "req/s",
        "p50 ms",
        "p99 ms",
        "added p50 ms",
        "kyma/direct rps",
        "core cpu ms/req",
        "bridge cpu ms/req",
        "gateway cpu ms/req",
        "upstream cpu ms/req",
    )
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---:" if i > 1 else "---" for i in range(len(head))) + "|",
    ]
    for r in rows:
        cpu = r.cpu_ms_per_req
        cells = (
            r.target,
            r.mode,
            str(r.concurrency),
            str(r.requests),
            str(r.errors),
            fmt(r.rps, 1),
            fmt(r.p50_ms),
            fmt(r.p99_ms),
            fmt(r.added_p50_ms),
            fmt(r.rps_ratio),
            fmt(cpu.get("core")),
            fmt(cpu.get("bridge")),
            fmt(cpu.get("gateway")),
            fmt(cpu.get("upstream")),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(head: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 2) -> str:
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if i < text_columns else "---:" for i in range(len(head))) + "|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def db_table(rows: Sequence[Row]) -> str:
    """PostgreSQL's work per request in the Kyma rows (--database-url)."""
    head = (
        "mode",
        "conc",
        "accounts",
        "requests",
        "req/s",
        "xact/req",
        "commits/req",
        "rollbacks/req",
        "write xact/req",
        "rows written/req",
        "WAL bytes/req",
        "request-log bytes/req",
        "statements/req",
        "pg cpu ms/req",
        "gateway+pg cpu ms/req",
        "idle xact/s",
        "other-db xact",
    )
    cells = []
    for r in rows:
        if r.target != "kyma" or not r.db:
            continue
        per = r.db["per_request"]
        cells.append(
            (
                r.mode,
                str(r.concurrency),
                str(r.accounts),
                str(r.requests),
                fmt(r.rps, 1),
                fmt(per["transactions"]),
                fmt(per["commits"]),
                fmt(per["rollbacks"]),
                fmt(per["write_transactions"]),
                fmt(per["rows_written"]),
                fmt(per["wal_bytes"], 0)
                + ("" if r.db["wal_source"].startswith("pg_walinspect") else " (server)"),
                fmt(per["request_log_bytes"], 0),
                fmt(per["statements"]),
                fmt(r.cpu_ms_per_req.get("postgres")),
                fmt(r.cpu_ms_per_req.get("gateway_and_postgres")),
                fmt(r.db.get("background_xacts_per_s")),
                str(r.db["other_databases_xacts"]),
            )
        )
    return markdown(head, cells)


def redis_table(rows: Sequence[Row]) -> str:
    """Redis's work per request in the Kyma rows (--redis-url)."""
    head = (
        "mode",
        "conc",
        "accounts",
        "requests",
        "req/s",
        "redis commands/req",
        "scripts/req",
        "redis cpu us/req",
        "top commands (total)",
        "other clients active",
        "connections opened",
    )
    cells = []
    for r in rows:
        if r.target != "kyma" or not r.redis:
            continue
        per = r.redis["per_request"]
        top = ", ".join(f"{k} {v}" for k, v in list(r.redis["commands_by_name"].items())[:4])
        cells.append(
            (
                r.mode,
                str(r.concurrency),
                str(r.accounts),
                str(r.requests),
                fmt(r.rps, 1),
                fmt(per["commands"]),
                fmt(per["scripts"]),
                fmt(per["cpu_us"], 1),
                top or "–",
                str(len(r.redis["other_clients_active"])),
                str(r.redis["connections_received"]),
            )
        )
    return markdown(head, cells)


def load_line(args: argparse.Namespace) -> str:
    if args.accounts == 1:
        who = "every request of a scenario comes from ONE account (one API key on all connections)"
    else:
        who = (
            f"requests come from {args.accounts} accounts (connection i uses account i mod "
            f"{args.accounts})"
        )
    return f"Load: {who}."


def db_notes(db: bench_db.BenchDatabase, args: argparse.Namespace) -> list[str]:
    return [
        f"PostgreSQL {db.server_version}, fresh database {db.name} in {bench_db.redact(db.admin_url)}; "
        f"counters read {args.pg_stats_wait:g} s after Kyma went idle (PostgreSQL's statistics "
        "flush delay), so the database window is the load window plus that wait.",
        "xact = commits + rollbacks in the bench database (pg_stat_database); write xact = "
        "transactions that wrote WAL in it; rows written = rows inserted + updated + deleted; "
        f"WAL: {db.walinspect_note or 'whole server'} (a value marked (server) is the whole "
        f"server's: pg_walinspect could not read that window); statements: {db.statements_note}.",
        "pg cpu = CPU of the PostgreSQL processes serving the bench database (backends, "
        "autovacuum; not the WAL writer, checkpointer or other shared processes), in the load "
        "window like the core's; gateway+pg is comparable with SQLite's gateway cpu, where the "
        "database's work is in the core.",
        "idle xact/s = the core's own database transactions per second while only the direct "
        "upstream was loaded; other-db xact = transactions of other databases of the server in "
        "the window (other users: server-wide numbers are noisy when it is large).",
        *db.notes,
    ]


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Gateway overhead per request: the test upstream directly vs. through Kyma.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short run (0.5 s warm-up, 2 s per scenario)"
    )
    parser.add_argument(
        "--duration", type=float, help="measured seconds per scenario (default 8, quick 2)"
    )
    parser.add_argument(
        "--warmup", type=float, help="warm-up seconds per scenario (default 2, quick 0.5)"
    )
    parser.add_argument(
        "--requests",
        type=int,
        help="at most this many measured requests per scenario (default 20000, quick 3000)",
    )
    parser.add_argument("--concurrency", default="1,32", help="comma-separated, e.g. 1,32")
    parser.add_argument(
        "--modes", default="nonstream,stream", help="comma-separated: nonstream,stream"
    )
    parser.add_argument("--upstream-latency-ms", type=float, default=0.0)
    parser.add_argument("--upstream-tokens-per-second", type=float, default=0.0)
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
    args.duration = args.duration if args.duration is not None else (2.0 if args.quick else 8.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0)
    args.requests = args.requests if args.requests is not None else (3000 if args.quick else 20000)
    args.settle = 0.3
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        parser.error("--concurrency takes comma-separated integers, e.g. 1,32")
    if not args.concurrency or min(args.concurrency) < 1:
        parser.error("--concurrency needs positive integers")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in MODES for m in args.modes):
        parser.error(f"--modes takes a comma-separated subset of {','.join(MODES)}")
    if args.duration <= 0 or args.warmup < 0 or args.requests < 1:
        parser.error("--duration and --requests must be positive, --warmup not negative")
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
    return args


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
    procs = Processes(workdir)
    db: bench_db.BenchDatabase | None = None
    findings: dict[str, dict[str, Any]] = {}
    kept: pathlib.Path | None = None
    try:
        print(
            f"bench: starting test upstream, core and bridge (work dir {workdir})",
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
        stack = start_stack(procs, args, db.url if db else None)
        print(
            f"bench: upstream :{stack.upstream_port} (pid {stack.upstream_pid}), core pid {stack.core_pid}, "
            f"bridge :{stack.bridge_port} (pid {stack.bridge_pid}); "
            f"{args.warmup:g}s warm-up + {args.duration:g}s (<= {args.requests} req) per scenario; "
            + load_line(args),
            file=sys.stderr,
            flush=True,
        )
        loadavg_start = os.getloadavg()
        rows = uvloop.run(run_all(stack, args, db))
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, bench_db.asyncpg.PostgresError) as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        findings = log_findings(procs, ("core", "bridge", "upstream", "faulty-upstream"))
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

    now = dt.datetime.now(dt.UTC)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "timestamp": now.isoformat(),
        "git": git_revision(),
        "command": "scripts/bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_start": loadavg_start,
            "loadavg_at_end": os.getloadavg(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "max_requests": args.requests,
            "concurrency": args.concurrency,
            "modes": args.modes,
            "upstream_latency_ms": args.upstream_latency_ms,
            "upstream_tokens_per_second": args.upstream_tokens_per_second,
            "kyma_log_level": args.log_level,
            "max_tokens": 16,
            "clk_tck": CLK_TCK,
            "accounts": args.accounts,
            "one_account": args.accounts == 1,
            "load": load_line(args),
            "database": db.describe() if db else {"kind": "sqlite (work dir)"},
            "pg_stats_wait_s": args.pg_stats_wait if db else None,
            "redis_url": bench_db.redact(args.redis_url) if args.redis_url else None,
            "core_env": args.core_env,
        },
        "logs": str(kept) if kept else None,
        "log_findings": findings,
        "rows": [r.__dict__ for r in rows],
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    sys.stderr.flush()
    print()
    print(load_line(args))
    print()
    print(table(rows))
    if db is not None:
        print("\nPostgreSQL per request (Kyma rows):\n")
        print(db_table(rows))
        print()
        for note in db_notes(db, args):
            print(f"- {note}")
    if args.redis_url:
        print("\nRedis per request (Kyma rows; commands run by Lua scripts included):\n")
        print(redis_table(rows))
        print(
            "\n- Redis CPU = used_cpu_sys + used_cpu_user of the whole server in the window "
            "(other clients' work too: see the last two columns; connections opened counts "
            "everyone's, the bench's INFO connection excluded)."
        )
    print(f"\nJSON: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    if kept:
        print(f"logs: {kept.relative_to(ROOT) if kept.is_relative_to(ROOT) else kept}")
    for name, found in findings.items():
        counts = ", ".join(f"{n} {level}" for level, n in found["counts"].items())
        print(f"bench: {name}.log has {counts}; first:", file=sys.stderr)
        for sample in found["samples"]:
            print(f"    {sample}", file=sys.stderr)
    errors = sum(r.errors for r in rows)
    if errors:
        print(f"bench: {errors} request(s) failed; see error samples above", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
