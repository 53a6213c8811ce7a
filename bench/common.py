"""What the benchmarks in bench/ share: argparse ranges, percentiles and ratios, a process's CPU
time from /proc, the load average, waiting for a port, the JSON line a CLI prints last, local
PostgreSQL databases dropped at the end, and orders written straight into the monolith's
database.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


# --- arguments and numbers ----------------------------------------------------------------------
def bounded(low: float, high: float, kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse `type`: the value read by `kind`, refused unless within [low, high]."""

    def parse(value: str) -> Any:
        number = kind(value)
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"{value} is not within [{low:g}, {high:g}]")
        return number

    return parse


def pct(values: Iterable[float], q: float, *, rounded: bool = False) -> float:
    """The `q` quantile (0 to 1) of `values`: one of them, never interpolated; nan if none.

    The rank (from 0) is floor(q * n), at most n - 1; with `rounded` it is round(q * (n - 1)),
    which is lower for high quantiles (of 100 values, p99 is the 99th rather than the largest).
    """
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    last = len(ordered) - 1
    rank = round(q * last) if rounded else int(q * len(ordered))
    return ordered[min(last, rank)]


def ratio(new: float | None, old: float | None) -> float | None:
    """`new / old` to two decimals; None if either is missing or nan, or `old` is 0."""
    if new is None or old is None or old != old or new != new or old == 0:
        return None
    return round(new / old, 2)


# --- processes and the machine ------------------------------------------------------------------
def process_stat(pid: int) -> tuple[float, int, float]:
    """A process's user + system CPU seconds, its parent's pid, and the CPU seconds of its
    children it has waited for (Linux /proc/PID/stat: utime, stime, ppid, cutime, cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / TICK
    return own, int(fields[1]), (int(fields[13]) + int(fields[14])) / TICK


def children(pid: int) -> list[int]:
    """The pids of every descendant of `pid` still running (pgrep; none without pgrep)."""
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return []
    kids = [int(x) for x in out.stdout.split()]
    return kids + [g for k in kids for g in children(k)]


def cpu_seconds(pid: int | None, *, descendants: bool = False) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc; 0.0 for None).

    With `descendants`, plus those of its descendants still running (a server's workers), and a
    process gone before it is read counts 0 instead of raising.
    """
    if pid is None:
        return 0.0
    if not descendants:
        return process_stat(pid)[0]
    return sum(_cpu_or_zero(p) for p in [pid, *children(pid)])


def _cpu_or_zero(pid: int) -> float:
    try:
        return process_stat(pid)[0]
    except (OSError, IndexError):
        return 0.0


def load_average() -> list[float]:
    """The machine's load average over 1, 5 and 15 minutes, to two decimals."""
    return [round(x, 2) for x in os.getloadavg()]


def wait_port(
    port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Return once something accepts connections on 127.0.0.1:`port`; RuntimeError after
    `timeout` seconds, or as soon as `proc` (the server being waited for) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}) before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def last_json(output: str, tail: int = 500) -> dict[str, Any]:
    """The last line of `output` that starts with `{`, parsed (a CLI's `--json` summary); a
    RuntimeError quoting the last `tail` characters of `output` if there is none."""
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            found: dict[str, Any] = json.loads(line)
            return found
    raise RuntimeError(f"no JSON in the output: {output[-tail:]!r}")


def interrupted(_signum: int, _frame: Any) -> None:
    """A signal handler that raises KeyboardInterrupt (a SIGTERM then cleans up as Ctrl-C)."""
    raise KeyboardInterrupt


# --- databases ----------------------------------------------------------------------------------
class Postgres:
    """Databases created on the local server; all dropped by `drop_all`."""

    def __init__(self, admin_url: str) -> None:
        host = make_url(admin_url).host
        if host not in LOCAL_HOSTS:
            raise SystemExit(f"PostgreSQL must be local (127.0.0.1), not {host!r}")
        self.admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.created: list[str] = []

    def create(self, name: str, template: str | None = None) -> str:
        """A new database `name` (a copy of `template` if given); its URL."""
        copy = f' TEMPLATE "{template}"' if template else ""
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"{copy}'))
        self.created.append(name)
        return self.admin.url.set(database=name).render_as_string(hide_password=False)

    def drop(self, name: str) -> None:
        """Drop database `name`, sessions still on it included."""
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        """Drop every database still created (errors ignored), then close the admin engine."""
        for name in list(self.created):
            with contextlib.suppress(Exception):
                self.drop(name)
        self.admin.dispose()


def insert_orders(
    legacy_url: str, user: int | str, count: int, total: Decimal, **columns: str
) -> list[int]:
    """`count` placed, unpaid EUR orders of `total` each, of `user` (an id, or an email looked
    up), inserted into the monolith's database in one transaction; their ids, in order.
    `columns` sets more of each order's columns (e.g. shipping_address)."""
    from sqlalchemy import insert, select

    from legacy_monolith.db import make_engine as make_monolith_engine
    from legacy_monolith.db import utcnow
    from legacy_monolith.models import Order, User

    engine = make_monolith_engine(legacy_url)
    now = utcnow()
    try:
        with engine.begin() as conn:
            if isinstance(user, str):
                user_id = conn.scalar(select(User.id).where(User.email == user))
            else:
                user_id = user
            row: dict[str, object] = {"user_id": user_id, "state": "placed", "currency": "EUR"}
            row |= {"total_amount": total, **columns, "created_at": now, "updated_at": now}
            query = insert(Order).returning(Order.id, sort_by_parameter_order=True)
            return list(conn.scalars(query, [dict(row) for _ in range(count)]))
    finally:
        engine.dispose()
