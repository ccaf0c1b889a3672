"""A throwaway PostgreSQL server on 127.0.0.1 for tests and benchmarks.

It runs the server binaries already on the machine (Debian: ``apt-get install
postgresql`` puts them in /usr/lib/postgresql/<version>/bin): ``initdb`` into a
temporary folder, ``pg_ctl start`` on a free loopback port, one database, and
``pg_ctl stop`` plus removal of the folder on `stop`. PostgreSQL refuses to run as
root, so under root the server runs as the ``postgres`` user (or ``nobody``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PostgresServer", "PostgresUnavailable", "find_postgres_bin"]


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be started here; the message says why."""


def find_postgres_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: $SAMEKEY_PG_BIN, the newest Debian one, or $PATH."""
    env = os.environ.get("SAMEKEY_PG_BIN")
    if env:  # an explicit choice is the only one
        return (
            Path(env)
            if (Path(env) / "initdb").is_file() and (Path(env) / "pg_ctl").is_file()
            else None
        )
    candidates: list[str] = []

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)  # /usr/lib/postgresql/<version>/bin
        except ValueError:
            return 0.0

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    which = shutil.which("initdb")
    if which:
        candidates.append(str(Path(which).resolve().parent))
    for folder in candidates:
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """``with PostgresServer() as pg: pg.dsn`` -> ``postgresql://samekey@127.0.0.1:<port>/samekey``.

    ``fsync=False`` makes it faster for tests (durability against power loss is not
    what tests can observe); benchmarks keep the default ``True``. Raises
    `PostgresUnavailable` when no server can be started.
    """

    def __init__(
        self, *, fsync: bool = True, database: str = "samekey", user: str = "samekey"
    ) -> None:
        self.fsync = fsync
        self.database = database
        self.user = user
        self.port = 0
        self._bin: Path | None = None
        self._root: Path | None = None
        self._uid: int | None = None
        self._gid: int | None = None
        self._running = False

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _cmd(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=timeout,
            user=self._uid,
            group=self._gid,
            extra_groups=[] if self._uid is not None else None,
            cwd=self._root,
            env={**os.environ, "LC_ALL": "C", "PGTZ": "UTC"},
        )

    def start(self) -> PostgresServer:
        self._bin = find_postgres_bin()
        if self._bin is None:
            raise PostgresUnavailable(
                "no PostgreSQL server binaries (initdb, pg_ctl) found under "
                "/usr/lib/postgresql/*/bin or on PATH; "
                "install them with `apt-get install postgresql` or set SAMEKEY_PG_BIN "
                "to their folder"
            )
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    entry = pwd.getpwnam(name)
                except KeyError:
                    continue
                self._uid, self._gid = entry.pw_uid, entry.pw_gid
                break
            else:
                raise PostgresUnavailable(
                    "running as root and no 'postgres' or 'nobody' user to run PostgreSQL as"
                )
        self._root = Path(tempfile.mkdtemp(prefix="samekey-pg-"))
        try:
            if self._uid is not None:
                os.chown(self._root, self._uid, self._gid or -1)
            self._init_and_start()
        except BaseException:
            self.stop()
            raise
        return self

    def _init_and_start(self) -> None:
        assert self._bin is not None and self._root is not None
        data = str(self._root / "data")
        initdb = [str(self._bin / "initdb"), "-D", data, "-U", self.user, "-A", "trust"]
        done = self._cmd(*initdb, "-E", "UTF8", "--no-sync")
        if done.returncode != 0:
            raise PostgresUnavailable(
                f"initdb failed: {(done.stderr or done.stdout).strip()[-800:]}"
            )
        self._start_server(data)
        created = self._cmd(
            str(self._bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
            self.database,
        )  # fmt: skip
        if created.returncode != 0:
            raise PostgresUnavailable(f"createdb failed: {created.stderr.strip()[-800:]}")

    def _start_server(self, data: str) -> None:
        assert self._bin is not None and self._root is not None
        last = ""
        for _ in range(3):  # the free port may be taken between choosing and binding
            self.port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -c "
                f"unix_socket_directories={self._root} "
                f"-c fsync={'on' if self.fsync else 'off'} -c max_connections=100"
            )
            log = str(self._root / "server.log")
            pg_ctl = [str(self._bin / "pg_ctl"), "-D", data, "-o", options, "-l", log]
            done = self._cmd(*pg_ctl, "-w", "-t", "30", "start")
            if done.returncode == 0:
                self._running = True
                return
            last = (done.stderr or done.stdout).strip() + " " + _tail(Path(log))
        raise PostgresUnavailable(f"pg_ctl start failed: {last[-800:]}")

    def stop(self) -> None:
        if self._running and self._bin is not None and self._root is not None:
            self._cmd(
                str(self._bin / "pg_ctl"),
                "-D",
                str(self._root / "data"),
                "-m",
                "fast",
                "-w",
                "stop",
            )
            self._running = False
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-600:]
    except OSError:
        return ""
