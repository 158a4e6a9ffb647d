"""`kyma serve` on every core of the machine: worker processes for the core and the bridge, and
the small parent that starts, watches and stops them.

The parent imports nothing but the standard library (Kyma's modules, pydantic, gRPC and the web
stack are imported by the workers, after they are forked), so it stays a few megabytes.

Start
-----
1. The parent forks the first worker (core 0; bridge 0 for `kyma serve bridge`). It reads the
   settings, binds the HTTP socket when bridges are to be served, hands the parent the plan
   (worker count, ports) and that socket over a socketpair, and goes on to serve: the settings
   are read once for the plan, by a process that needs them anyway.
2. The parent forks the other workers. Core ``k`` listens on ``KYMA_GRPC_PORT + k`` (a port of
   its own: gRPC gets no shared socket, and separate ports let every bridge balance its calls
   over all cores); each bridge worker is given every core's address (round robin + health, as
   with ``KYMA_CORE_ADDRESS``). Bridge workers accept on one listening socket they inherit: a
   second Kyma started on the same port fails loudly instead of silently sharing it (as it
   would with SO_REUSEPORT). With ``KYMA_GRPC_PORT=0`` the bridges are forked once the cores
   have said which ports they got. Worker ``k`` serves its metrics on the metrics ports ``+ 2k``.
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
        _say("the first worker stopped before it could start the others")
        supervisor.stop()
        _wait_all(supervisor)
        return 1
    plan, http_socket = received
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
            not_for_cores = () if http_socket is None else (http_socket.fileno(),)
            supervisor.fork(
                _Worker("core", index),
                _core_worker(index, workers, ready_write),
                close=not_for_cores,
            )
            return
        addresses = [cores[k] for k in range(core_count)] if part == "all" else None
        supervisor.fork(
            _Worker("bridge", index),
            _bridge_worker(index, workers, http_socket, addresses, ready_write),
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
        if ready >= {("core", 0)} | ({("bridge", 0)} if bridge_count else set()):
            for index in range(core_count):
                start("core", index)
            for index in range(bridge_count):
                start("bridge", index)

    buffered = b""
    announced = False
    while supervisor.children:
        start_due()
        if http_socket is not None and len(started) == core_count + bridge_count:
            http_socket.close()  # the bridges have their own copies
            http_socket = None
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
            print(f"kyma serving on {where} with {what} (pid {os.getpid()})", flush=True)
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


def _receive_plan(channel: socket.socket) -> tuple[dict[str, Any], socket.socket | None] | None:
    try:
        message, fds, _flags, _address = socket.recv_fds(channel, 65536, 1)
    except OSError:
        return None
    if not message:
        return None
    plan = json.loads(message)
    sock = socket.socket(fileno=fds[0]) if fds else None
    return plan, sock


def _settings() -> Settings:
    from core_service.logging_setup import configure
    from core_service.settings import Settings

    settings = Settings()
    configure(settings.log_level)
    return settings


def _bind(settings: Settings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET
    return socket.create_server(
        (settings.http_host, settings.http_port), family=family, backlog=2048
    )


def _first_worker(part: str, channel: socket.socket, ready: int) -> int:
    """Worker 0: reads the settings, sends the plan (and the HTTP socket), then serves."""
    settings = _settings()
    workers = worker_count(settings.workers, part)
    sock = _bind(settings) if part in ("all", "bridge") else None
    address = ""
    if sock is not None:
        port = sock.getsockname()[1]
        host = f"[{settings.http_host}]" if sock.family == socket.AF_INET6 else settings.http_host
        address = f"{host}:{port}"
    plan = {
        "workers": workers,
        "grpc_host": settings.grpc_host,
        "grpc_port": settings.grpc_port,
        "http_address": address,
    }
    socket.send_fds(channel, [json.dumps(plan).encode()], [sock.fileno()] if sock else [])
    channel.close()
    if part == "bridge":
        assert sock is not None
        return _serve_bridge(worker_settings(settings, 0, workers), sock, 0, ready)
    if sock is not None:
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
