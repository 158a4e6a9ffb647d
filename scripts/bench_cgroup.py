"""A CPU budget for Kyma's processes in scripts/bench (--cpus-per-worker): a cgroup whose quota is
Q CPUs per worker, shared by every process of the core and bridge trees.

Why: on a machine with as many cores as workers, the upstream and the load generator compete
with the workers for the same cores, so "two workers against one" measures the machine, not
the gateway. Capping the gateway at Q CPUs per worker (Q well under one) leaves the rest of the
machine to the upstream and the load generator in both runs: one worker gets Q CPUs, two get
2Q, and the ratio of their throughputs is how Kyma scales with the CPUs it is given — what
pinning the upstream and the load generator to other machines would show.

Processes join the cgroup before they exec (Processes.start's preexec), so every child they
start is in it too. cgroup v1's cpu controller (cpu.cfs_quota_us) or v2's (cpu.max) is used,
whichever this machine mounts writable; the bench refuses the option when neither is.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import uuid

_V1 = pathlib.Path("/sys/fs/cgroup/cpu")
_V2 = pathlib.Path("/sys/fs/cgroup")
PERIOD_US = 100_000


class CpuBudget:
    def __init__(self, path: pathlib.Path, version: int, cpus: float) -> None:
        self.path = path
        self.version = version
        self.cpus = cpus

    @classmethod
    def create(cls, cpus: float) -> CpuBudget:
        """A new cgroup limited to `cpus` CPUs; OSError (with why) when none can be made."""
        name = f"kyma-bench-{uuid.uuid4().hex[:8]}"
        quota = max(1000, round(cpus * PERIOD_US))
        if (_V1 / "cpu.cfs_quota_us").exists():
            path = _V1 / name
            path.mkdir()
            (path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (path / "cpu.cfs_quota_us").write_text(str(quota))
            return cls(path, 1, cpus)
        if "cpu" in (_V2 / "cgroup.controllers").read_text().split():
            path = _V2 / name
            path.mkdir()
            (path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            return cls(path, 2, cpus)
        raise OSError("no writable cgroup CPU controller (cgroup v1 cpu or v2 cpu.max)")

    def join(self) -> None:
        """Move the calling process into the cgroup (run in the child before exec)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def throttled_s(self) -> float:
        """Seconds the cgroup's processes spent throttled so far: the budget was the limit."""
        with contextlib.suppress(OSError):
            for line in (self.path / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "throttled_time":  # v1, nanoseconds
                    return int(value) / 1e9
                if key == "throttled_usec":  # v2
                    return int(value) / 1e6
        return 0.0

    def remove(self) -> None:
        """Remove the cgroup once its processes have ended (the kernel refuses it before)."""
        with contextlib.suppress(OSError):
            self.path.rmdir()
