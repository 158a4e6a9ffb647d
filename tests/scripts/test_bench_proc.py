"""scripts/bench_proc.py: the cores of --workers N get N consecutive ports that no port bound to 0
can take (a bench run once failed when a worker's ephemeral port was core 1's); the PSS of two
processes counts the pages they share once, where their RSS counts them twice."""

from __future__ import annotations

import socket
import subprocess
import sys

from bench_proc import HOST, free_port_range, rss_kb, trees_pss_mb


def test_consecutive_ports_below_the_ephemeral_range_all_free() -> None:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_low = int(f.read().split()[0])
    base = free_port_range(3)
    assert 10_000 <= base and base + 3 <= ephemeral_low
    for port in range(base, base + 3):
        with socket.socket() as sock:
            sock.bind((HOST, port))


def test_two_processes_sharing_pages_cost_less_than_their_rss_added() -> None:
    # Two idle Pythons map the same interpreter and libraries: PSS splits those pages between
    # them. (Children of their own: this process's tree holds whatever else the suite runs.)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", "import sys; print('idle', flush=True); sys.stdin.read()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    try:
        first, second = (child.pid for child in children)
        for child in children:  # both have started and wait, idle
            assert child.stdout is not None and child.stdout.readline() == b"idle\n"
        rss_added = (rss_kb(first) + rss_kb(second)) / 1024.0
        both = trees_pss_mb(first, second)
        assert 0 < trees_pss_mb(first) < both < rss_added
        # A process named twice (a tree inside another) is counted once.
        assert abs(trees_pss_mb(first, first) - trees_pss_mb(first)) < 0.5
    finally:
        for child in children:
            child.communicate(b"")


def test_a_process_that_is_gone_counts_nothing() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert trees_pss_mb(gone.pid) == 0.0
