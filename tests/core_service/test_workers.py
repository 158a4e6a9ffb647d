"""What each worker of `kyma serve` is given (core_service/workers.py); the processes themselves
are tested in tests/integration/test_workers.py."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys

import pytest

from core_service.announce import print_line
from core_service.settings import Settings
from core_service.workers import _bind, worker_count, worker_settings


def test_the_default_is_the_machines_cores_for_serve_and_one_for_a_part() -> None:
    assert worker_count(None, "all") == (os.cpu_count() or 1)
    assert worker_count(None, "core") == worker_count(None, "bridge") == 1
    assert worker_count(3, "all") == worker_count(3, "core") == 3


def test_worker_k_gets_its_own_core_and_metrics_ports() -> None:
    settings = Settings(grpc_port=50051)
    first = worker_settings(settings, 0, 3, cores=["127.0.0.1:50051", "127.0.0.1:50052"])
    third = worker_settings(settings, 2, 3, cores=["127.0.0.1:50051", "127.0.0.1:50052"])
    assert (first.grpc_port, first.metrics_port, first.bridge_metrics_port) == (50051, 9464, 9465)
    assert (third.grpc_port, third.metrics_port, third.bridge_metrics_port) == (50053, 9468, 9469)
    assert first.workers == third.workers == 3
    assert third.core_target == "ipv4:127.0.0.1:50051,127.0.0.1:50052"
    # Metrics ports left at their defaults stay a preference (a busy one moves elsewhere);
    # a port the operator gave stays a requirement.
    assert not third.chosen("metrics_port") and third.chosen("grpc_port")
    given = worker_settings(Settings(metrics_port=7000), 1, 2)
    assert given.metrics_port == 7002 and given.chosen("metrics_port")


def test_free_ports_stay_free_and_a_given_core_address_is_kept() -> None:
    settings = Settings(grpc_port=0, metrics_port=0, core_address="10.0.0.5:50051")
    second = worker_settings(settings, 1, 2, cores=["127.0.0.1:1"])
    assert (second.grpc_port, second.metrics_port) == (0, 0)
    assert second.core_address == "10.0.0.5:50051"


def test_the_parent_imports_only_the_standard_library() -> None:
    """`kyma serve`'s parent process: what `kyma serve` imports before it forks."""
    probe = (
        "import sys; import core_service.cli.main, core_service.workers; "
        "heavy = {'pydantic', 'grpc', 'sqlalchemy', 'yaml', 'uvicorn', 'core_service.settings'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "[]"


def test_a_line_for_the_parents_reader_is_one_write_even_unbuffered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The workers share one stdout; `print` would write the text and its newline apart on an
    unbuffered stream (PYTHONUNBUFFERED, as CI sets it), letting two cores' lines interleave
    into one — which is how the workers test once saw a single "listening" line for two cores."""
    writes: list[bytes] = []

    class Pipe(io.BytesIO):
        def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
            writes.append(bytes(data))
            return len(bytes(data))

    stream = io.TextIOWrapper(Pipe(), write_through=True)  # what `python -u` gives
    monkeypatch.setattr(sys, "stdout", stream)
    print("kyma core listening on 127.0.0.1:1", flush=True)
    assert writes == [b"kyma core listening on 127.0.0.1:1", b"\n"]  # the fault, shown
    writes.clear()
    print_line("kyma core listening on 127.0.0.1:1")
    assert writes == [b"kyma core listening on 127.0.0.1:1\n"]


def test_a_bridges_socket_takes_connections_only_once_its_bridge_serves_on_it() -> None:
    """The bridges share the port through SO_REUSEPORT. Only the first socket listens from the
    start: a connection made while bridge 1 has not started yet goes to bridge 0's queue, not
    to a queue nobody accepts from. Once bridge 1 serves (its server calls listen), the kernel
    spreads connections over both."""
    socks = _bind(Settings(http_host="127.0.0.1", http_port=0), 2)
    try:
        listening = [s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) for s in socks]
        assert listening == [1, 0]
        port = socks[0].getsockname()[1]
        assert socks[1].getsockname()[1] == port
        for sock in socks:
            sock.settimeout(5)
        for _ in range(20):  # every one of them is accepted by the listening socket
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                socks[0].accept()[0].close()
        socks[1].listen(2048)  # what bridge 1's server does when it starts
        accepted = [0, 0]
        for sock in socks:
            sock.setblocking(False)
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(64)]
        try:
            for index, sock in enumerate(socks):
                while True:
                    try:
                        sock.accept()[0].close()
                    except BlockingIOError:
                        break
                    accepted[index] += 1
        finally:
            for client in clients:
                client.close()
        # Each connection is queued on one socket before connect returns (the kernel completes
        # the handshake); with 64 of them both sockets get some (a hash of the client's port).
        assert sum(accepted) == 64 and min(accepted) > 0
    finally:
        for sock in socks:
            sock.close()
