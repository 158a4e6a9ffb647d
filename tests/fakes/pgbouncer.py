"""PgBouncer in transaction mode in front of the local PostgreSQL, for tests: `pgbouncer()`.

It runs in the foreground as `postgres` (through runuser: PgBouncer refuses to run as root), with its ini, auth
file and log in a temporary directory `postgres` owns, on a free port of 127.0.0.1; every
database name is passed through to 127.0.0.1:5432. `postgres` is also its admin user, so
`PgBouncer.show("STATS")` reads its console.
"""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.fakes.pg_cluster import LIVENESS_SECONDS, as_postgres, free_port, owned_tmp_dir

BINARY = pathlib.Path("/usr/sbin/pgbouncer")


@dataclass
class PgBouncer:
    port: int
    directory: pathlib.Path
    process: subprocess.Popen[bytes]

    def url(self, database: str) -> str:
        """`database` on the local PostgreSQL, reached through PgBouncer."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def show(self, what: str) -> list[dict[str, str]]:
        """`SHOW <what>` on the admin console, as rows of column → value."""
        result = subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "pgbouncer",
                "-A",
                "-F",
                "\t",
                "-P",
                "footer=off",
                "-c",
                f"SHOW {what}",
            ],
            capture_output=True,
            text=True,
            timeout=LIVENESS_SECONDS,
            check=True,
        )
        header, *rows = result.stdout.splitlines()
        names = header.split("\t")
        return [dict(zip(names, row.split("\t"), strict=True)) for row in rows]

    def log(self) -> str:
        try:
            return (self.directory / "pgbouncer.log").read_text(errors="replace")
        except OSError:
            return ""


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(LIVENESS_SECONDS)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def pgbouncer(*, default_pool_size: int = 5) -> Iterator[PgBouncer]:
    """A running PgBouncer 1.18+ in transaction mode (skips the test when it is not installed);
    stopped, and its directory removed, at exit."""
    binary = BINARY if BINARY.is_file() else shutil.which("pgbouncer")
    if binary is None:
        pytest.skip("PgBouncer is not installed (/usr/sbin/pgbouncer; apt package pgbouncer)")
    directory = owned_tmp_dir("kyma-pgbouncer-")
    port = free_port()
    (directory / "userlist.txt").write_text('"postgres" ""\n')
    ini = directory / "pgbouncer.ini"
    ini.write_text(
        f"""[databases]
* = host=127.0.0.1 port=5432

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {directory / "userlist.txt"}
admin_users = postgres
pool_mode = transaction
default_pool_size = {default_pool_size}
max_client_conn = 500
ignore_startup_parameters = extra_float_digits
logfile = {directory / "pgbouncer.log"}
"""
    )
    process = subprocess.Popen(
        as_postgres(binary, ini),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=directory,
        start_new_session=True,
    )
    running = PgBouncer(port, directory, process)
    try:
        deadline = time.monotonic() + LIVENESS_SECONDS
        while not _accepts(port):
            if process.poll() is not None:
                raise RuntimeError(f"PgBouncer did not start:\n{running.log()}")
            assert time.monotonic() < deadline, f"PgBouncer does not listen:\n{running.log()}"
            time.sleep(0.05)
        yield running
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(LIVENESS_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(directory, ignore_errors=True)
