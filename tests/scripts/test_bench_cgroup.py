"""scripts/bench_cgroup.py: the bench's CPU budget (--cpus-per-worker) puts a process and what it
starts into a cgroup with the quota asked for, and removes the cgroup afterwards."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time

import pytest
from bench_cgroup import PERIOD_US, CpuBudget


def test_a_child_and_its_children_run_inside_the_budget() -> None:
    try:
        budget = CpuBudget.create(0.5)
    except OSError as error:
        pytest.skip(f"no writable cgroup CPU controller here: {error}")
    try:
        quota = (
            (budget.path / "cpu.cfs_quota_us").read_text().strip()
            if budget.version == 1
            else (budget.path / "cpu.max").read_text().split()[0]
        )
        assert int(quota) == PERIOD_US // 2
        # The child joins before exec; a grandchild it starts is in the cgroup too.
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import subprocess, sys; subprocess.run([sys.executable, '-c', "
                "'import sys; sys.stdin.read()'])",
            ],
            stdin=subprocess.PIPE,
            preexec_fn=budget.join,
        )
        try:
            members: set[int] = set()
            for _ in range(400):  # until the grandchild has started (liveness bound, not a timing)
                members = {int(p) for p in (budget.path / "cgroup.procs").read_text().split()}
                if len(members) >= 2:
                    break
                time.sleep(0.05)
            assert child.pid in members and len(members) == 2
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(timeout=60)
        assert budget.throttled_s() >= 0.0
    finally:
        budget.remove()
    assert not pathlib.Path(budget.path).exists()
