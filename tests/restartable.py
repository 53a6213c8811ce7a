"""Real servers of a test's own that the test may stop, start and restart (outage tests).

Rules:
- each server is the test's alone: a free port on 127.0.0.1 and a temporary folder, removed
  afterwards, so a restart never touches the suite's shared Redis and PostgreSQL;
- a server whose binaries are missing skips the test outside CI and FAILS it under CI=true, as
  `tests.support.redis_process` does: CI must run every test;
- PostgreSQL never runs as root: when the tests do, the folder is given to the `postgres` user
  and the binaries run through `runuser -u postgres --` (as .ci/run starts its own cluster).

`RedisProcess` (kill -9, then start on the same port; `persist=True` keeps the data through the
restart) lives in `tests.support` and is re-exported here.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.support import RedisProcess, free_port, port_answers, redis_process, wait_until

__all__ = ["PostgresProcess", "RedisProcess", "postgres_process", "redis_process"]

PG_USER = "postgres"


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path))


def postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl are: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(os.path.realpath(pg_ctl)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    return Path(found[-1]).parent if found else None


def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


class PostgresProcess:
    """A PostgreSQL cluster of the test's own (trust auth, user `postgres`, fsync off)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="strangler-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.running = False

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if _as_root():
            command = ["runuser", "-u", PG_USER, "--", *command]
        done = subprocess.run(
            command, cwd=self.root, capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{program} {' '.join(args[:1])} failed ({done.returncode}): "
                f"{done.stderr.strip() or done.stdout.strip()}\n{log}"
            )

    def init(self) -> None:
        if _as_root():
            shutil.chown(self.root, user=PG_USER)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "--auth=trust",
            "-U",
            PG_USER,
            "--encoding=UTF8",
            "--no-sync",
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-o", options)
        self.running = True
        wait_until(lambda: port_answers(self.port), what=f"PostgreSQL on {self.port}")

    def stop(self) -> None:
        """`pg_ctl stop -m fast`: open sessions are ended, as in a restart by an operator."""
        if self.running:
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w")
            self.running = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _missing(message: str) -> None:
    if IN_CI:
        pytest.fail(f"{message}; CI must run every test")
    pytest.skip(message)


@contextmanager
def postgres_process() -> Iterator[PostgresProcess]:
    """A started PostgreSQL of the test's own, removed afterwards."""
    bindir = postgres_bindir()
    if bindir is None:
        _missing(
            "PostgreSQL's initdb and pg_ctl are not installed (the restart tests run their own)"
        )
    assert bindir is not None
    if _as_root() and shutil.which("runuser") is None:
        _missing("running as root without runuser: PostgreSQL cannot be started as postgres")
    if _as_root():
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            _missing(f"running as root without a {PG_USER!r} user to run PostgreSQL as")
    server = PostgresProcess(bindir)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.cleanup()
