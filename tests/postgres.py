"""A throwaway PostgreSQL server for the tests that need a real database (`alexnet tune --storage`).

`postgres_url` starts one cluster for the whole test run: its own data folder in a temporary directory, a free
port on 127.0.0.1, its unix socket in that directory, trust authentication on loopback only, fsync off. It yields
a SQLAlchemy URL (`postgresql+psycopg://USER@127.0.0.1:PORT/DB`, the dialect of psycopg 3, which optuna's
RDBStorage takes as it is) and stops the server and deletes the folder afterwards, whatever the tests did.

PostgreSQL refuses to run as root: as root, initdb, pg_ctl and the server run as the `postgres` system user
(Debian's package creates it) through runuser or setpriv, and the folder is handed to that user.

Without PostgreSQL's binaries the tests that use it are skipped; with ALEXNET_REQUIRE_POSTGRES=1 (CI, where
.ci/run installs Debian's `postgresql`) they fail instead.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

USER, DATABASE = "alexnet", "alexnet_tests"
REQUIRE = "ALEXNET_REQUIRE_POSTGRES"


def unavailable(reason: str):
    """Skip, or fail where PostgreSQL is required (ALEXNET_REQUIRE_POSTGRES=1)."""
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{reason} ({REQUIRE}=1)", pytrace=False)
    pytest.skip(reason)


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def find_binaries() -> dict[str, Path] | None:
    """initdb and pg_ctl from one installation: PATH first, then Debian's /usr/lib/postgresql/VERSION/bin (newest)."""
    on_path = shutil.which("initdb")
    dirs = [Path(on_path).resolve().parent] if on_path else []
    dirs += [Path(d) for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)]
    for d in dirs:
        tools = {name: d / name for name in ("initdb", "pg_ctl", "postgres")}
        if all(p.is_file() and os.access(p, os.X_OK) for p in tools.values()):
            return tools
    return None


def unprivileged_prefix() -> tuple[list[str], int, int] | None:
    """As root: the command prefix that runs a program as `postgres`, with that user's uid and gid."""
    import pwd

    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        return None
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--"], entry.pw_uid, entry.pw_gid
    if shutil.which("setpriv"):
        return (["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups", "--"],
                entry.pw_uid, entry.pw_gid)
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One data folder and the server on it, run directly or through `prefix` (as the postgres user)."""

    def __init__(self, tools: dict[str, Path], root: Path, prefix: list[str]):
        self.tools, self.root, self.prefix = tools, root, prefix
        self.data, self.log = root / "data", root / "server.log"
        self.port = 0

    def run(self, tool: str, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        for name in [k for k in env if k.startswith("PG")]:  # the caller's PGDATA, PGPORT... are not this server's
            del env[name]
        result = subprocess.run([*self.prefix, str(self.tools[tool]), *args], cwd=self.root, env=env,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
                               f"{self.log_tail()}")
        return result

    def log_tail(self) -> str:
        try:
            return "\nserver log:\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        except OSError:
            return ""

    def init(self) -> None:
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                 "--locale=C", "--no-sync")
        # Password-less, loopback only: the unix socket (in a folder only this user can enter) and 127.0.0.1.
        (self.data / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.root}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                       "shared_buffers = 32MB\nmax_connections = 60\n")

    def start(self) -> None:
        # The port is free when picked and taken when the server binds it; another process may win it between
        # the two, so a failed start picks again.
        for attempt in range(3):
            self.port = free_port()
            result = self.run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log),
                              "-o", f"-p {self.port}", check=False)
            if result.returncode == 0:
                return
            self.stop("immediate")
            if attempt == 2:
                raise RuntimeError(f"pg_ctl start exited {result.returncode}:\n{result.stdout}{result.stderr}"
                                   f"{self.log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            result = self.run("pg_ctl", "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.data), check=False)
            if result.returncode != 0 and mode != "immediate":
                self.run("pg_ctl", "stop", "-w", "-t", "30", "-m", "immediate", "-D", str(self.data), check=False)

    def create_database(self) -> str:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             autocommit=True, connect_timeout=10) as conn:
            conn.execute(f"CREATE ROLE {USER} LOGIN")
            conn.execute(f"CREATE DATABASE {DATABASE} OWNER {USER}")
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{DATABASE}"


@pytest.fixture(scope="session")
def postgres_url():
    """`postgresql+psycopg://alexnet@127.0.0.1:PORT/alexnet_tests` on a server of its own, for the whole run."""
    tools = find_binaries()
    if tools is None:
        unavailable("PostgreSQL is not installed (no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("psycopg (3) is not installed")
    prefix: list[str] = []
    owner = None
    if os.geteuid() == 0:
        found = unprivileged_prefix()
        if found is None:
            unavailable("running as root, and PostgreSQL will not: no `postgres` user, or neither runuser nor "
                        "setpriv to become it")
        prefix, uid, gid = found
        owner = (uid, gid)
    # A short path of its own under /tmp: the unix socket's path must stay under ~100 bytes, and as root the
    # postgres user must be able to enter it (pytest's own temporary folders are root's, mode 0700).
    root = Path(tempfile.mkdtemp(prefix="alexnet-pg-"))
    if owner is not None:
        os.chown(root, *owner)
    cluster = Cluster(tools, root, prefix)
    try:
        cluster.init()
        cluster.start()
        url = cluster.create_database()
        yield url
    finally:
        try:
            cluster.stop("fast")
        finally:
            for attempt in range(5):
                shutil.rmtree(root, ignore_errors=True)
                if not root.exists():
                    break
                time.sleep(0.2)
