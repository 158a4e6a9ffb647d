"""`kyma serve` on every core of the machine: worker processes for the core and the bridge, and
the small parent that starts, watches and stops them.

The parent imports nothing but the standard library (Kyma's modules, pydantic, gRPC and the web
stack are imported by the workers, after they are forked), so it stays a few megabytes.

Start
-----
1. The parent forks the first worker (core 0; bridge 0 for `kyma serve bridge`). It reads the
   settings, binds the HTTP socket when bridges are to be served, hands the parent the plan
   (worker count, ports) and those sockets over a socketpair, and goes on to serve: the settings
   are read once for the plan, by a process that needs them anyway.
2. The parent forks the other workers. Core ``k`` listens on ``KYMA_GRPC_PORT + k`` (a port of
   its own: gRPC gets no shared socket, and separate ports let every bridge balance its calls
   over all cores); each bridge worker is given every core's address (round robin + health, as
   with ``KYMA_CORE_ADDRESS``). Bridge worker ``k`` accepts on listening socket ``k`` of the
   HTTP port, which the first worker bound with SO_REUSEPORT (the kernel spreads connections
   evenly over them) after checking the port with a bind without it, so that a second Kyma on
   the same port fails loudly instead of silently sharing it. With ``KYMA_GRPC_PORT=0`` the
   bridges are forked once the cores have said which ports they got. Worker ``k`` serves its
   metrics on the metrics ports ``+ 2k``.
3. Each worker tells the parent when it serves (a line on a pipe); once all have, the parent
   prints ``kyma serving …``.

Stop
----
SIGTERM or SIGINT to the parent: SIGTERM to every worker, each drains (cores: in-flight requests
for ``KYMA_SHUTDOWN_GRACE_SECONDS``, settlements and log rows written; bridges: open requests)
and exits; the parent exits when all have, 0 if they all stopped cleanly. SIGHUP is passed to
the cores (catalogue reload).

A worker that dies unasked is not restarted: the parent says which one died and how, stops all
the others gracefully, and exits 1, so that the service manager (systemd, Docker, Kubernetes)
sees the failure and restarts Kyma whole, rather than a crash loop hiding behind a supervisor.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core_service.announce import print_line

if TYPE_CHECKING:
    from core_service.settings import Settings

PARTS = ("all", "core", "bridge")
_CLEAN = {0, -signal.SIGTERM, -signal.SIGINT}
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


def worker_count(configured: int | None, part: str) -> int:
    """KYMA_WORKERS, or else the machine's cores for `kyma serve` and one for a single part."""
    if configured is not None:
        return configured
    if part != "all":
        return 1
    return os.cpu_count() or 1


def core_port(grpc_port: int, index: int) -> int:
    return grpc_port + index if grpc_port else 0


def local_host(host: str) -> str:
    """Where a server listening on `host` is reached from this machine."""
    return {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, host)


def worker_settings(
    settings: Settings, index: int, workers: int, *, cores: list[str] | None = None
) -> Settings:
    """The settings of worker `index` of `workers`: its gRPC and metrics ports, and (for a
    bridge) the addresses of this machine's cores. A metrics port left at its default stays a
    preference (another port is taken if it is busy)."""
    update: dict[str, Any] = {"workers": workers}
    if index:
        update["grpc_port"] = core_port(settings.grpc_port, index)
        for name in ("metrics_port", "bridge_metrics_port"):
            port = getattr(settings, name)
            if port:
                update[name] = port + 2 * index
    if cores is not None and not settings.chosen("core_address"):
        update["core_address"] = ",".join(cores)
    chosen = {name for name in update if settings.chosen(name)}
    copy = settings.model_copy(update=update)
    # model_copy counts every updated field as given; keep "given" for what the operator gave.
    copy.__pydantic_fields_set__.difference_update(set(update) - chosen - {"core_address"})
    return copy


@dataclass
class _Worker:
    role: str  # "core" or "bridge"
    index: int


@dataclass
class _Supervisor:
    part: str
    children: dict[int, _Worker] = field(default_factory=dict)
    stopping: bool = False
    failed: bool = False
    _parent_fds: list[int] = field(default_factory=list)

    def fork(
        self, worker: _Worker, run: Callable[[], int | None], *, close: tuple[int, ...] = ()
    ) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid:
            self.children[pid] = worker
            return
        code = 1
        try:
            for sig in _FORWARDED:
                signal.signal(sig, signal.SIG_DFL)
            _stop_with_parent(parent)
            # Ctrl-C reaches every process of the terminal's group; the parent passes it on as
            # SIGTERM, and a worker that is serving handles SIGINT itself.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.set_wakeup_fd(-1)
            for fd in (*self._parent_fds, *close):
                os.close(fd)
            code = run() or 0
        except SystemExit as exit_:
            if isinstance(exit_.code, str):  # a message, as Python prints one at exit
                print(exit_.code, file=sys.stderr)
            code = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: S110 - a closed stream must not keep the worker alive
                    pass
            os._exit(code)

    def signal_all(self, sig: int, role: str | None = None) -> None:
        for pid, worker in list(self.children.items()):
            if role is None or worker.role == role:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass

    def on_signal(self, sig: int, _frame: object) -> None:
        if sig == signal.SIGHUP:
            self.signal_all(signal.SIGHUP, "core")
        elif sig in (signal.SIGTERM, signal.SIGINT):
            self.stop()

    def stop(self) -> None:
        self.stopping = True
        self.signal_all(signal.SIGTERM)

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            worker = self.children.pop(pid, None)
            if worker is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if self.stopping and code in _CLEAN:
                continue
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            _say(f"{worker.role} worker {worker.index} (pid {pid}) {how}")
            self.failed = self.failed or not self.stopping or code not in _CLEAN
            if not self.stopping:
                _say("stopping the other workers (Kyma does not restart a dead worker)")
                self.stop()


def _stop_with_parent(parent: int) -> None:
    """A worker whose parent is gone (even SIGKILLed) is sent SIGTERM: it drains and exits
    rather than serving on unsupervised (Linux; elsewhere it serves until stopped)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() != parent:  # the parent died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def _say(message: str) -> None:
    print(f"kyma: {message}", file=sys.stderr, flush=True)


def serve(part: str) -> int:
    """Run `part` ("all", "core" or "bridge") as worker processes until they stop."""
    supervisor = _Supervisor(part)
    plan_parent, plan_child = socket.socketpair()
    ready_read, ready_write = os.pipe()
    wake_read, wake_write = os.pipe()
    for fd in (wake_read, wake_write):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_write)
    for sig in _FORWARDED:
        signal.signal(sig, supervisor.on_signal if sig != signal.SIGCHLD else _ignore)
    supervisor._parent_fds = [plan_parent.fileno(), ready_read, wake_read, wake_write]
    first = _Worker("bridge" if part == "bridge" else "core", 0)
    supervisor.fork(first, lambda: _first_worker(part, plan_child, ready_write))
    plan_child.close()
    received = _receive_plan(plan_parent)
    plan_parent.close()
    if received is None:
        asked = supervisor.stopping
        if not asked:
            _say("the first worker stopped before it could start the others")
        supervisor.stop()
        _wait_all(supervisor)
        return 0 if asked else 1
    plan, http_sockets = received
    supervisor._parent_fds = [ready_read, wake_read, wake_write]
    workers = int(plan["workers"])
    core_count = workers if part in ("all", "core") else 0
    bridge_count = workers if part in ("all", "bridge") else 0
    cores: dict[int, str] = {}  # index -> address, known from the port (or once it serves)
    if plan["grpc_port"]:
        host = local_host(plan["grpc_host"])
        cores = {k: f"{host}:{core_port(plan['grpc_port'], k)}" for k in range(core_count)}
    started = {(first.role, 0)}
    ready: set[tuple[str, int]] = set()

    def start(role: str, index: int) -> None:
        if (role, index) in started or supervisor.stopping:
            return
        started.add((role, index))
        if role == "core":
            not_for_cores = tuple(sock.fileno() for sock in http_sockets)
            supervisor.fork(
                _Worker("core", index),
                _core_worker(index, workers, ready_write),
                close=not_for_cores,
            )
            return
        addresses = [cores[k] for k in range(core_count)] if part == "all" else None
        mine = http_sockets[index]
        supervisor.fork(
            _Worker("bridge", index),
            _bridge_worker(index, workers, mine, addresses, ready_write),
            close=tuple(sock.fileno() for sock in http_sockets if sock is not mine),
        )

    def start_due() -> None:
        """The first core and bridge first, the others once those serve: on a busy machine
        the first pair is ready (and /readyz answers) sooner than if all started at once.
        Cores whose ports are not known in advance (KYMA_GRPC_PORT=0) all start at once, and
        the bridges once they have said where they listen."""
        if len(cores) < core_count:
            for index in range(core_count):
                start("core", index)
            return
        if bridge_count:
            start("bridge", 0)
        first_pair = {("core", 0)} if core_count else set()
        if bridge_count:
            first_pair.add(("bridge", 0))
        if ready >= first_pair:
            for index in range(core_count):
                start("core", index)
            for index in range(bridge_count):
                start("bridge", index)

    buffered = b""
    announced = False
    while supervisor.children:
        start_due()
        if http_sockets and len(started) == core_count + bridge_count:
            for sock in http_sockets:
                sock.close()  # the bridges have their own copies
            http_sockets = []
        try:
            readable, _, _ = select.select([ready_read, wake_read], [], [])
        except InterruptedError:  # pragma: no cover - retried by Python itself (PEP 475)
            continue
        if wake_read in readable:
            while True:
                try:
                    if not os.read(wake_read, 512):
                        break
                except BlockingIOError:
                    break
        if ready_read in readable:
            buffered += os.read(ready_read, 4096)
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                role, number, address = line.decode().split(" ")
                ready.add((role, int(number)))
                if role == "core":
                    cores[int(number)] = address
        supervisor.reap()
        if not announced and len(ready) == core_count + bridge_count:
            announced = True
            what = f"{workers} worker{'s' if workers > 1 else ''}"
            where = (
                f"http://{plan['http_address']}"
                if bridge_count
                else ", ".join(cores[k] for k in range(core_count))
            )
            print_line(f"kyma serving on {where} with {what} (pid {os.getpid()})")
    return 1 if supervisor.failed else 0


def _ignore(_sig: int, _frame: object) -> None:
    """SIGCHLD wakes the parent's loop (through the wakeup fd); the loop reaps."""


def _wait_all(supervisor: _Supervisor) -> None:
    while supervisor.children:
        try:
            pid, _status = os.waitpid(-1, 0)
        except ChildProcessError:
            return
        supervisor.children.pop(pid, None)


def _receive_plan(channel: socket.socket) -> tuple[dict[str, Any], list[socket.socket]] | None:
    try:
        message, fds, _flags, _address = socket.recv_fds(channel, 65536, 256)
    except OSError:
        return None
    if not message:
        return None
    plan = json.loads(message)
    return plan, [socket.socket(fileno=fd) for fd in fds]


def _settings() -> Settings:
    from core_service.logging_setup import configure
    from core_service.settings import read_settings

    settings = read_settings()
    configure(settings.log_level)
    return settings


def _bind(settings: Settings, count: int) -> list[socket.socket]:
    """The bridges' sockets, one per bridge worker. Several share the port through
    SO_REUSEPORT, which spreads new connections evenly over them (one socket that all accept
    on would give most connections to whichever bridge is awake); the port is first bound
    without it, so that a port another process holds — another Kyma's bridges included —
    fails here, loudly, rather than being shared.

    Only the first socket listens from the start: its bridge starts first, and a connection
    made before it serves waits in its queue. The others are bound but not listening until
    their own bridge serves on them (uvicorn's server calls listen), because the kernel hands
    each new connection to one of the *listening* sockets of the port: a socket that listened
    before its bridge started would hold every connection sent its way until then (about a
    second on a busy machine, the bridges being started once the first pair serves)."""
    family = socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET
    try:
        first = socket.create_server(
            (settings.http_host, settings.http_port), family=family, backlog=2048
        )
    except OSError as error:
        raise SystemExit(
            f"kyma: cannot listen on {settings.http_host}:{settings.http_port} "
            f"(KYMA_HTTP_HOST, KYMA_HTTP_PORT): {os.strerror(error.errno) if error.errno else error}"
        ) from None
    if count == 1:
        return [first]
    port = first.getsockname()[1]
    first.close()
    socks = [_port_sharer(family, settings.http_host, port) for _ in range(count)]
    socks[0].listen(2048)
    return socks


def _port_sharer(family: socket.AddressFamily, host: str, port: int) -> socket.socket:
    """A socket bound to `port` beside others (SO_REUSEPORT), not yet listening; the options
    are those `socket.create_server` sets."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _first_worker(part: str, channel: socket.socket, ready: int) -> int:
    """Worker 0: reads the settings, sends the plan (and the HTTP sockets), then serves."""
    settings = _settings()
    workers = worker_count(settings.workers, part)
    socks = _bind(settings, workers) if part in ("all", "bridge") else []
    address = ""
    if socks:
        port = socks[0].getsockname()[1]
        family = socks[0].family
        host = f"[{settings.http_host}]" if family == socket.AF_INET6 else settings.http_host
        address = f"{host}:{port}"
    plan = {
        "workers": workers,
        "grpc_host": settings.grpc_host,
        "grpc_port": settings.grpc_port,
        "http_address": address,
    }
    socket.send_fds(channel, [json.dumps(plan).encode()], [sock.fileno() for sock in socks])
    channel.close()
    if part == "bridge":
        for sock in socks[1:]:
            sock.close()
        return _serve_bridge(worker_settings(settings, 0, workers), socks[0], 0, ready)
    for sock in socks:
        sock.close()
    return _serve_core(worker_settings(settings, 0, workers), 0, ready)


def _core_worker(index: int, workers: int, ready: int) -> Callable[[], int]:
    return lambda: _serve_core(worker_settings(_settings(), index, workers), index, ready)


def _bridge_worker(
    index: int, workers: int, sock: socket.socket | None, cores: list[str] | None, ready: int
) -> Callable[[], int]:
    def run() -> int:
        assert sock is not None
        settings = worker_settings(_settings(), index, workers, cores=cores)
        return _serve_bridge(settings, sock, index, ready)

    return run


def _tell(ready: int, role: str, index: int, address: str) -> None:
    os.write(ready, f"{role} {index} {address}\n".encode())


def _serve_core(settings: Settings, index: int, ready: int) -> int:
    import uvloop

    from core_service.serve import run_core

    def serving(port: int) -> None:
        _tell(ready, "core", index, f"{local_host(settings.grpc_host)}:{port}")

    uvloop.run(run_core(settings, ready=serving))
    return 0


def _serve_bridge(settings: Settings, sock: socket.socket, index: int, ready: int) -> int:
    from http_bridge.serve import run_bridge

    run_bridge(settings, sock=sock, ready=lambda: _tell(ready, "bridge", index, "-"))
    return 0


if __name__ == "__main__":  # `kyma serve core|bridge` with several workers execs this
    sys.exit(serve(sys.argv[1]))
