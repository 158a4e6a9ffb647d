"""scripts/bench_proc.py's ports: the cores of --workers N get N consecutive ports that no port
bound to 0 can take (a bench run once failed when a worker's ephemeral port was core 1's)."""

from __future__ import annotations

import socket

from bench_proc import HOST, free_port_range


def test_consecutive_ports_below_the_ephemeral_range_all_free() -> None:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_low = int(f.read().split()[0])
    base = free_port_range(3)
    assert 10_000 <= base and base + 3 <= ephemeral_low
    for port in range(base, base + 3):
        with socket.socket() as sock:
            sock.bind((HOST, port))
