"""Processes for scripts/bench: starting and stopping the children, and reading what they cost
from /proc (Linux only).

Every child is read as a process tree (it and its descendants, found through
/proc/PID/task/TID/children), so a server that forks workers is measured whole. A tree's CPU is
the utime + stime of its live members plus the cutime + cstime they collected from children that
exited and were waited for: each process counted once. Children are stopped by PID, tree by
tree (TERM, then KILL for any left after the grace period), never by name.
"""

from __future__ import annotations

import ctypes
import os
import pathlib
import random
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable

CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"


# --- /proc ----------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()


def tree(pid: int) -> list[int]:
    """pid and its live descendants, pid first."""
    seen: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        try:
            tids = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        seen.append(current)
        for tid in tids:
            try:
                with open(f"/proc/{current}/task/{tid}/children", "rb") as f:
                    stack.extend(int(child) for child in f.read().split())
            except OSError:
                pass
    return seen


def cpu_ticks(pid: int) -> int:
    """CPU clock ticks the tree of `pid` has used (see the module docstring); 0 once it is gone."""
    total = 0
    for member in tree(pid):
        fields = _stat_fields(member)
        if fields is not None:
            # fields 14-17 of proc(5): utime, stime, cutime, cstime
            total += sum(int(value) for value in fields[11:15])
    return total


def _kb(path: str, field: bytes) -> int:
    """The kB figure of the line starting with `field` in a /proc file (0 when it is gone)."""
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pid: int) -> int:
    """Resident set size of one process in kB (0 when it is gone)."""
    return _kb(f"/proc/{pid}/status", b"VmRSS:")


def tree_rss_mb(pid: int) -> tuple[float, int]:
    """(RSS of the tree of `pid` in MB, processes in it). Pages shared between forked members
    are counted once per process, as RSS does."""
    members = tree(pid)
    return sum(rss_kb(member) for member in members) / 1024.0, len(members)


def pss_kb(pid: int) -> int:
    """Proportional set size of one process in kB (0 when it is gone or unreadable): its private
    pages, plus each page it shares with other processes divided by how many map it."""
    return _kb(f"/proc/{pid}/smaps_rollup", b"Pss:")


def trees_pss_mb(*pids: int) -> float:
    """PSS of the trees of `pids` together, in MB: what they cost the machine, each page they
    share (a library's code, a forked parent's heap) counted once between them, where adding
    their RSS counts it in every process that maps it."""
    members = {member for pid in pids for member in tree(pid)}
    return sum(pss_kb(member) for member in members) / 1024.0


def machine_busy_ticks() -> int:
    """Busy clock ticks of all CPUs together (aggregate line of /proc/stat), for spotting load
    from outside the bench during a window."""
    with open("/proc/stat", "rb") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return user + nice + system + irq + softirq + steal


def loadavg() -> tuple[float, float, float]:
    return os.getloadavg()


# --- children -------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the bench dies without cleaning up (SIGKILL)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def free_port_range(count: int) -> int:
    """The first of `count` consecutive ports free now, below the kernel's ephemeral range, so
    that no port bound to 0 later (a worker's metrics, a client's connection) can take one of
    them before the process meant for it binds it: with --workers N, core k binds base + k."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    rng = random.SystemRandom()
    for _ in range(200):
        base = rng.randrange(10_000, max(10_001, ephemeral_low - count))
        held = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind((HOST, port))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports below {ephemeral_low}")


class Processes:
    """Child processes, each in its own session (so a Ctrl-C reaches only the bench, which
    then stops them in order), with output going to log files in the work dir."""

    def __init__(self, workdir: pathlib.Path, cwd: pathlib.Path) -> None:
        self.workdir = workdir
        self.cwd = cwd
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        cwd: pathlib.Path | None = None,
        *,
        join: Callable[[], None] | None = None,
    ) -> subprocess.Popen[bytes]:
        """`join`, if given, runs in the child before exec (e.g. CpuBudget.join): whatever it
        sets up is inherited by everything the child starts."""
        log = open(self.workdir / f"{name}.log", "wb")

        def before_exec() -> None:
            _die_with_parent()
            if join is not None:
                join()

        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd or self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=before_exec,
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

    def stop_all(self, grace_s: float = 10.0) -> None:
        """TERM every member of every child's tree (last started first), KILL what is left of
        them after `grace_s`."""
        members: list[tuple[int, bytes]] = []
        for _name, proc in reversed(self.children):
            if proc.poll() is None:
                members.extend(
                    (pid, started) for pid in tree(proc.pid) if (started := _start_time(pid))
                )
        _signal(members, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for _name, proc in reversed(self.children):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        while time.monotonic() < deadline and any(_running(member) for member in members):
            time.sleep(0.1)
        _signal([member for member in members if _running(member)], signal.SIGKILL)
        for _name, proc in self.children:
            if proc.poll() is None:
                proc.wait()
        self.children.clear()


def _start_time(pid: int) -> bytes | None:
    """When pid started (field 22 of proc(5)): with the pid it names one process, even after
    the pid is reused."""
    fields = _stat_fields(pid)
    return fields[19] if fields is not None else None


def _running(member: tuple[int, bytes]) -> bool:
    """True while that process runs (a zombie, dead but not yet waited for, does not)."""
    fields = _stat_fields(member[0])
    return fields is not None and fields[19] == member[1] and fields[0] != b"Z"


def _signal(members: Iterable[tuple[int, bytes]], sig: signal.Signals) -> None:
    for pid, started in members:
        if _start_time(pid) != started:
            continue  # gone, and the pid perhaps someone else's by now
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


# --- HTTP readiness -------------------------------------------------------------------------


def http_get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_get(url) == 200:
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited (status {proc.returncode}) before {url} answered")
        time.sleep(0.1)
    raise RuntimeError(f"{what}: {url} did not answer 200 within {timeout:.0f}s")
