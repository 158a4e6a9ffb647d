"""A PostgreSQL cluster of a test's own, to kill and start again: `PrivateCluster`.

initdb into a temporary directory owned by `postgres` (PostgreSQL refuses to run as root),
trust authentication, `fsync=off`, listening on 127.0.0.1 at a free port, with a database
`kyma` in it. `kill()` is SIGKILL of the postmaster (a crash, not a shutdown): it returns once
the postmaster and every backend it had are gone, so `start()` can bring the same data up on
the same port again (through crash recovery). Everything is removed at exit.

The postmaster runs in the foreground under this process (not as the daemon `pg_ctl start`
would leave to init): killed, it is reaped at once by its parent, so its pid, still in the
lock file, cannot look alive to the next start.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from types import TracebackType

import pytest

LIVENESS_SECONDS = 60.0  # how long a start or a kill may take before the test gives up
_SERVER_BINARIES = ("initdb", "postgres", "pg_isready")


def server_binaries() -> pathlib.Path:
    """The directory of PostgreSQL's server programs (skips the test when there is none)."""
    candidates = [pathlib.Path("/usr/lib/postgresql/15/bin")]
    candidates += sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for directory in candidates:
        if all((directory / name).is_file() for name in _SERVER_BINARIES):
            return directory
    pytest.skip(
        "the PostgreSQL server programs (initdb, postgres, pg_isready) are not installed "
        "under /usr/lib/postgresql/*/bin"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_user() -> pwd.struct_passwd:
    """The `postgres` account the servers run as (skips the test when there is none)."""
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no 'postgres' user to run a private PostgreSQL server as")


def as_postgres(*command: str | os.PathLike[str]) -> list[str]:
    """`command` run as `postgres` when this process is root (the servers refuse to run as
    root): through `runuser`, not `subprocess`'s own user switch, which rules out vfork —
    and a plain fork of a process with gRPC's threads runs gRPC's fork handlers in the child,
    which can abort it before it ever execs."""
    words = [os.fspath(part) for part in command]
    if os.geteuid() != 0:
        return words
    postgres_user()
    if shutil.which("runuser") is None:
        pytest.skip("runuser (util-linux) is needed to run PostgreSQL tools as 'postgres'")
    return ["runuser", "-u", "postgres", "--", *words]


def owned_tmp_dir(prefix: str) -> pathlib.Path:
    """A new temporary directory that `postgres` owns (when this process is root)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        user = postgres_user()
        os.chown(path, user.pw_uid, user.pw_gid)
    return path


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after `pid (comm)`: state, ppid, … (comm may hold spaces)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running (a zombie is dead, only not yet reaped)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


class PrivateCluster:
    """`with PrivateCluster() as cluster:` a running server; `cluster.url` is its `kyma`
    database (postgresql://postgres@127.0.0.1:PORT/kyma)."""

    def __init__(self) -> None:
        self._bin = server_binaries()
        postgres_user()
        self.port = free_port()
        self.kills = 0
        self._root: pathlib.Path | None = None
        self._server: subprocess.Popen[bytes] | None = None  # runuser, or the postmaster
        self._postmaster: int | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/kyma"

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.poll() is None

    def __enter__(self) -> PrivateCluster:
        self._root = owned_tmp_dir("kyma-pg-")
        try:
            self._initdb()
            self.start()
            self.psql("CREATE DATABASE kyma")
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._remove()

    @property
    def _data(self) -> pathlib.Path:
        assert self._root is not None, "the cluster is not set up"
        return self._root / "data"

    @property
    def _log(self) -> pathlib.Path:
        assert self._root is not None, "the cluster is not set up"
        return self._root / "server.log"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _initdb(self) -> None:
        result = subprocess.run(
            as_postgres(
                self._bin / "initdb",
                "-D",
                self._data,
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ),
            capture_output=True,
            text=True,
            timeout=LIVENESS_SECONDS,
            cwd=self._root,
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        with (self._data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# kyma tests: a private, disposable server\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self._root}'\n"
                "fsync = off\n"
                "max_connections = 200\n"
            )

    def start(self) -> None:
        """Start the server (again, after `kill`: same data, same port) and return once it
        accepts connections."""
        assert not self.running, "the server is already running"
        with self._log.open("ab") as log:
            self._server = subprocess.Popen(
                as_postgres(self._bin / "postgres", "-D", self._data),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self._root,
                start_new_session=True,  # a Ctrl-C of the test run is not a crash of it
            )
        deadline = time.monotonic() + LIVENESS_SECONDS
        while not self._accepts():
            if self._server.poll() is not None:
                raise RuntimeError(f"PostgreSQL did not start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL does not accept connections:\n{self.log_tail()}")
            time.sleep(0.05)
        self._postmaster = self._find_postmaster(self._server.pid)

    @staticmethod
    def _find_postmaster(launched: int) -> int:
        """The postmaster's pid: what was launched, or runuser's one child."""
        if os.geteuid() != 0:
            return launched
        [postmaster] = children_of(launched)
        return postmaster

    def _accepts(self) -> bool:
        ready = subprocess.run(
            [self._bin / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port)]
            + ["-U", "postgres", "-d", "postgres"],
            timeout=LIVENESS_SECONDS,
        )
        return ready.returncode == 0

    def kill(self) -> None:
        """SIGKILL the postmaster; return once it and every backend it had are gone."""
        server, postmaster = self._server, self._postmaster
        if server is None or server.poll() is not None or postmaster is None:
            return
        doomed = children_of(postmaster) | {postmaster}
        os.kill(postmaster, signal.SIGKILL)
        server.wait(LIVENESS_SECONDS)  # runuser (if any) goes with it, having reaped it
        self._postmaster = None
        self.kills += 1
        deadline = time.monotonic() + LIVENESS_SECONDS
        while left := {pid for pid in doomed if alive(pid)}:
            if time.monotonic() > deadline:  # a backend that missed its postmaster's death
                for pid in left:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + LIVENESS_SECONDS
            time.sleep(0.01)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run `sql` as postgres in `database`; its output, unaligned, tuples only."""
        program = self._bin / "psql"
        result = subprocess.run(
            [
                program if program.is_file() else "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-qAt",
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=LIVENESS_SECONDS,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr}")
        return result.stdout

    def _remove(self) -> None:
        if self._root is None:
            return
        with contextlib.suppress(Exception):
            self.kill()
        shutil.rmtree(self._root, ignore_errors=True)
        self._root = None
