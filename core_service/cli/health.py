"""`kyma health [core|bridge|all]`: whether the Kyma processes on this machine answer — the
core's gRPC health (overall: SERVING while its database answers) and the bridge's `/healthz`
— on the ports the settings name. Exit status 0 when every part asked about answers, 1 when
one does not (each part's state is printed). The container image's HEALTHCHECK runs it.

Without a part it checks what this container serves: the part PID 1 runs when PID 1 is
`kyma serve PART` (as in the image), else both.
"""

from __future__ import annotations

import argparse
import pathlib
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2

from core_service.settings import Settings, read_settings

TIMEOUT_SECONDS = 3.0
_PARTS = ("core", "bridge")


def _local(host: str) -> str:
    """Where to reach a server listening on `host` from this machine."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host


def core_answers(settings: Settings) -> str | None:
    """None when the core is SERVING; else what is wrong."""
    target = f"{_local(settings.grpc_host)}:{settings.grpc_port}"
    with grpc.insecure_channel(target) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            reply = check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_SECONDS)
        except grpc.RpcError as error:
            return f"no answer on {target} ({error.code().name})"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)} (its database?)"
    return None


def bridge_answers(settings: Settings) -> str | None:
    """None when the bridge answers /healthz; else what is wrong."""
    url = f"http://{_local(settings.http_host)}:{settings.http_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as reply:
            return None if reply.status == 200 else f"{url} answered {reply.status}"
    except (urllib.error.URLError, OSError) as error:
        return f"no answer from {url} ({error})"


def served_here(cmdline: pathlib.Path = pathlib.Path("/proc/1/cmdline")) -> tuple[str, ...]:
    """The parts PID 1 serves when it is `kyma serve [PART]`; both otherwise."""
    try:
        words = [w.decode(errors="replace") for w in cmdline.read_bytes().split(b"\0") if w]
    except OSError:
        return _PARTS
    if "serve" in words:
        rest = words[words.index("serve") + 1 :]
        if rest and rest[0] in _PARTS:
            return (rest[0],)
    return _PARTS


def run(args: argparse.Namespace) -> int:
    settings = read_settings()
    parts = served_here() if args.part is None else _PARTS if args.part == "all" else (args.part,)
    checks = {"core": core_answers, "bridge": bridge_answers}
    failed = False
    for part in parts:
        problem = checks[part](settings)
        print(f"{part}: {'ok' if problem is None else problem}")
        failed |= problem is not None
    return 1 if failed else 0


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    health = commands.add_parser(
        "health", help="whether this machine's core and bridge answer (exit status 0 or 1)"
    )
    health.add_argument(
        "part",
        nargs="?",
        choices=["all", *_PARTS],
        default=None,
        help="what to check (default: what PID 1 serves, when it is `kyma serve`; else all)",
    )
    health.set_defaults(run=run)
