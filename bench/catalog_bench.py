"""The catalog read side (`services/catalog`) against the monolith's own catalog GETs, in one run:
the same requests, the same data, the same database kind, one uvicorn worker each.

Per backend (SQLite in a temporary folder; PostgreSQL: two fresh databases on
STRANGLER_BENCH_POSTGRES_URL, default postgresql+psycopg://postgres@127.0.0.1:5432/postgres,
which must name a local host; both dropped at the end):
1. A monolith database is seeded with ~`--products` products (`legacy_monolith.seed`, the code
   behind `python -m legacy_monolith seed`, with `products_per_category` = products / 14 and no
   orders); the catalog's read model is filled by the real sync CLI, as operators fill it:
   `python -m proxy sync backfill --sync services/catalog/sync/categories.yaml … --migrate`,
   then the same with `products.yaml` (which projects the views and the search index). On
   PostgreSQL both databases are then ANALYZEd (what autovacuum does within a minute or so of a
   bulk fill; fresh from the fill, without statistics, the planner picks other plans for both:
   `--no-analyze` measures that state).
2. Both servers start as their operators start them (`python -m legacy_monolith`, `python -m
   services.catalog`, 127.0.0.1, port 0, access logs on as deployed). The monolith caches its
   catalog answers in its in-process LRU (60 s). The catalog runs WITHOUT Redis unless
   `--redis-url` is given: its answer cache then checks each hit against the read model's
   version (one primary-key SELECT); with Redis its events clear it and a hit costs no query.
3. Parity first: a sample of answers (categories, list pages, searches with 1-2 and 3+
   character and unmatched `q`, products, a 404) must be byte-identical on both (status, body,
   ETag, Content-Type); the bench aborts otherwise (a benchmark of wrong answers is worthless).
4. Load: an asyncio httpx client in this process (on uvloop), `--concurrency` requests in
   flight, for `--seconds` per round (half that for `detail` and `categories`), `--rounds`
   rounds per service, the services interleaved (monolith, catalog, then catalog, monolith, …)
   so that machine noise and drift hit both. Every answer's status must be 200. Workloads:
   - `list`: product pages, per_page 20, over category_id / in_stock / sort / page;
   - `search`: `q` cut from real product names and SKUs (3-8 characters), some 1-2 character
     ones, some that match nothing; mostly page 1, with some sort, category and in_stock;
   - `detail`: `/products/{id}` of active products; `categories`: `/categories` (one URL, so
     only "repeated").
   Two variants each, for fairness to caches: `varied` walks a shuffled pool of distinct
   queries (every combination of the list's parameters; thousands of searches; every active
   product), each service from the pool's start, so neither side's cache sees a query twice
   unless a pool is exhausted (the `keys` column then shows fewer keys than requests);
   `repeated` cycles 10 fixed queries (cache hits for both).
Reported per workload and service: requests, errors, distinct URLs asked, req/s (requests over
the rounds' summed wall time), p50 and p99 latency (ms, every request of every round), the
server process's CPU (/proc user+system, as bench/payment_post.py) per request and the cores
it used; on PostgreSQL also the CPU of the backend processes serving it (SQLite's work is in
the server process): those connected to its database (pg_stat_activity, /proc) plus those that
exited during the round (the services' pools close connections beyond 5 when they come back,
so sessions come and go under load): the growth of the postmaster's exited children's CPU,
exact unless another database opened sessions meanwhile (then marked `~`);
this client's CPU in cores (near 1.0 the client, not the server, may be the limit); and the
ratios catalog/monolith of req/s, p99 and CPU per request (server + database). On a shared or
small machine CPU per request is the steadier number: req/s and latency move with whatever
else runs (the load average at the start and end is printed).

    python -m bench.catalog_bench                       # both backends, ~3 minutes on 2 cores
    python -m bench.catalog_bench --backend sqlite --seconds 5 --rounds 3 --json
    python -m bench.catalog_bench --redis-url redis://127.0.0.1:6379/0   # catalog cache on

Everything runs on 127.0.0.1; every process started and every database created is removed at
the end, also on an error, Ctrl-C or SIGTERM. Durations, counts and sizes are capped (--help).
Exit status: 0, 1 if any request failed, 2 if the answers differ.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import secrets
import signal
import string
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from sqlalchemy import create_engine, select, text

from bench.common import (
    LOCAL_HOSTS,
    ROOT,
    Postgres,
    bounded,
    cpu_seconds,
    interrupted,
    last_json,
    load_average,
    pct,
    process_stat,
    ratio,
)
from legacy_monolith.db import make_engine as make_monolith_engine
from legacy_monolith.models import Category, Product
from legacy_monolith.seed import seed
from proxy.procs import Child
from services.catalog.settings import Settings as CatalogSettings

PY = sys.executable
SYNCS = (
    ROOT / "services" / "catalog" / "sync" / "categories.yaml",
    ROOT / "services" / "catalog" / "sync" / "products.yaml",
)
POSTGRES_ADMIN = os.environ.get(
    "STRANGLER_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
MONOLITH, CATALOG = "monolith", "catalog"
SERVICES = (MONOLITH, CATALOG)
PER_PAGE = 20
SORTS = ("name", "price", "-price", "newest")
SEED_CATEGORIES = 14  # legacy_monolith.seed's catalog
REPEATED = 10  # queries in a "repeated" set
PARITY = {"list": 30, "search": 60, "detail": 20}  # sampled from each varied pool
SEARCH_POOL = 12_000
TIMEOUT = 30.0
STARTUP_TIMEOUT = 60.0
BACKFILL_TIMEOUT = 600.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the data and the queries ------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    id: int
    name: str
    sku: str
    category_id: int
    stock_qty: int


@dataclass(frozen=True)
class Shop:
    """What the seeded monolith holds, as the queries need it."""

    active: list[Item]
    inactive: list[int]
    categories: list[int]

    @property
    def total(self) -> int:
        return len(self.active) + len(self.inactive)


def read_shop(url: str) -> Shop:
    engine = make_monolith_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(
                    Product.id,
                    Product.name,
                    Product.sku,
                    Product.category_id,
                    Product.stock_qty,
                    Product.is_active,
                ).order_by(Product.id)
            ).all()
            categories = list(conn.scalars(select(Category.id).order_by(Category.id)))
    finally:
        engine.dispose()
    active = [Item(r[0], r[1], r[2], r[3], r[4]) for r in rows if r[5]]
    return Shop(active, [r[0] for r in rows if not r[5]], categories)


def products_path(
    *,
    q: str | None = None,
    category_id: int | None = None,
    in_stock: bool | None = None,
    sort: str = "name",
    page: int = 1,
) -> str:
    """A list URL; defaults left out (as a client sends them), per_page always 20."""
    params: dict[str, str | int] = {}
    if q is not None:
        params["q"] = q
    if category_id is not None:
        params["category_id"] = category_id
    if in_stock is not None:
        params["in_stock"] = "true" if in_stock else "false"
    if sort != "name":
        params["sort"] = sort
    if page != 1:
        params["page"] = page
    params["per_page"] = PER_PAGE
    return "/api/v1/products?" + urlencode(params)


def list_paths(shop: Shop, rng: random.Random) -> list[str]:
    """Every (category or none, in_stock, sort, page) a client can ask for, shuffled."""
    totals: Counter[tuple[int | None, bool | None]] = Counter()
    for item in shop.active:
        for category in (None, item.category_id):
            for stock in (None, item.stock_qty > 0):
                totals[category, stock] += 1
    paths = []
    for category in (None, *shop.categories):
        for in_stock in (None, True, False):
            pages = max(1, math.ceil(totals[category, in_stock] / PER_PAGE))
            for sort in SORTS:
                for page in range(1, pages + 1):
                    paths.append(
                        products_path(category_id=category, in_stock=in_stock, sort=sort, page=page)
                    )
    rng.shuffle(paths)
    return paths


class Searches:
    """`q` values: fragments of real names and SKUs, short ones, and ones matching nothing."""

    def __init__(self, shop: Shop, rng: random.Random) -> None:
        self.shop, self.rng = shop, rng
        self.haystack = [(i.name.lower(), i.sku.lower()) for i in shop.active]

    def fragment(self, low: int, high: int) -> str:
        while True:
            item = self.rng.choice(self.shop.active)
            source = item.name if self.rng.random() < 0.75 else item.sku
            size = self.rng.randint(low, min(high, len(source)))
            start = self.rng.randint(0, len(source) - size)
            q = source[start : start + size]
            if q.strip() == q and q:
                return q

    def unmatched(self) -> str:
        while True:
            size = self.rng.randint(3, 7)
            q = "q" + "".join(self.rng.choices(string.ascii_lowercase + string.digits, k=size - 1))
            if not any(q in name or q in sku for name, sku in self.haystack):
                return q

    def q(self, kind: float) -> str:
        if kind < 0.72:
            return self.fragment(3, 8)
        if kind < 0.87:
            return self.fragment(1, 2)
        return self.unmatched()

    def path(self, q: str) -> str:
        rng = self.rng
        return products_path(
            q=q,
            category_id=rng.choice(self.shop.categories) if rng.random() < 0.15 else None,
            in_stock=True if rng.random() < 0.15 else None,
            sort="name" if rng.random() < 0.6 else rng.choice(SORTS),
            page=1 if rng.random() < 0.8 else 2,
        )

    def pool(self, count: int) -> list[str]:
        paths: dict[str, None] = {}
        attempts = 0
        while len(paths) < count and attempts < count * 20:
            attempts += 1
            paths.setdefault(self.path(self.q(self.rng.random())))
        return list(paths)

    def repeated(self) -> list[str]:
        """Six fragments, two short, two unmatched; page 1, sorted by name."""
        qs = [self.fragment(3, 8) for _ in range(6)] + [self.fragment(1, 2) for _ in range(2)]
        return [products_path(q=q) for q in [*qs, self.unmatched(), self.unmatched()]]


@dataclass
class Pool:
    """A workload's variant: its URLs, walked in order (and from the start again if used up)."""

    workload: str
    variant: str
    paths: list[str]
    share: float = 1.0  # of --seconds per round


@dataclass
class Queries:
    pools: list[Pool]
    parity: list[str]


def make_queries(shop: Shop, seed_value: int = 20240601) -> Queries:
    rng = random.Random(seed_value)
    lists = list_paths(shop, rng)
    # Repeated lists: popular first pages (removed from the varied pool).
    repeated_lists = [p for p in lists if "page" not in parse_qs(urlsplit(p).query)][:REPEATED]
    lists = [p for p in lists if p not in set(repeated_lists)]
    searches = Searches(shop, rng)
    repeated_searches = searches.repeated()
    varied_searches = [p for p in searches.pool(SEARCH_POOL) if p not in set(repeated_searches)]
    ids = [item.id for item in shop.active]
    rng.shuffle(ids)
    details = [f"/api/v1/products/{i}" for i in ids]
    repeated_details, details = details[:REPEATED], details[REPEATED:]
    # The parity sample comes off the varied pools' ends: the load never asks it again, so the
    # monolith's cache gains nothing from the check.
    parity: list[str] = []
    varied = {"list": lists, "search": varied_searches, "detail": details}
    for name, count in PARITY.items():
        pool = varied[name]
        parity += pool[-count:]
        del pool[-count:]
    parity += ["/api/v1/categories", *repeated_lists, *repeated_searches, *repeated_details]
    parity += [f"/api/v1/products/{i}" for i in shop.inactive[:2]]  # 404 problem+json
    parity.append(products_path(page=10_000))  # past the end: an empty page
    pools = [
        Pool("list", "varied", lists),
        Pool("list", "repeated", repeated_lists),
        Pool("search", "varied", varied_searches),
        Pool("search", "repeated", repeated_searches),
        Pool("detail", "varied", details, 0.5),
        Pool("detail", "repeated", repeated_details, 0.5),
        Pool("categories", "repeated", ["/api/v1/categories"], 0.5),
    ]
    return Queries(pools, parity)


# --- the databases ------------------------------------------------------------------------------
ACTIVITY = "SELECT pid FROM pg_stat_activity WHERE datname = :name"
SESSIONS = (  # PostgreSQL 14+: sessions ever opened on this database, and on all the others
    "SELECT sum(sessions) FILTER (WHERE datname = :name), "
    "sum(sessions) FILTER (WHERE datname IS DISTINCT FROM :name) FROM pg_stat_database"
)


@dataclass(frozen=True)
class DatabaseSnapshot:
    live: dict[int, float]  # CPU seconds of each backend connected to the database, by pid
    reaped: float  # CPU seconds of every exited backend (the postmaster's waited-for children)
    sessions: int  # sessions ever opened on this database
    others: int  # ... and on every other database of the server

    def cpu_since(self, before: DatabaseSnapshot) -> float:
        """Backends alive now: their CPU since `before` (all of it if new); backends gone: the
        postmaster's children's CPU grew by their whole lives, less what `before` counted."""
        live = sum(cpu - before.live.get(pid, 0.0) for pid, cpu in self.live.items())
        gone = sum(cpu for pid, cpu in before.live.items() if pid not in self.live)
        return live + (self.reaped - before.reaped) - gone


def database_snapshot(pg: Postgres, database: str) -> DatabaseSnapshot:
    """The CPU so far of the server processes serving `database` (module docstring)."""
    with pg.admin.connect() as conn:
        pids = [int(p) for p in conn.scalars(text(ACTIVITY), {"name": database})]
        sessions = conn.execute(text(SESSIONS), {"name": database}).one()
        postmaster = process_stat(int(conn.scalar(text("SELECT pg_backend_pid()"))))[1]
    live = {}
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):  # gone meanwhile
            live[pid] = cpu_seconds(pid)
    reaped = process_stat(postmaster)[2]
    return DatabaseSnapshot(live, reaped, int(sessions[0] or 0), int(sessions[1] or 0))


def seed_monolith(url: str, products: int) -> tuple[Shop, float]:
    started = time.perf_counter()
    engine = make_monolith_engine(url)
    try:
        per_category = max(1, round(products / SEED_CATEGORIES))
        seed(
            engine,
            payments=0,
            users=5,
            products_per_category=per_category,
            password_iterations=1_000,
        )
    finally:
        engine.dispose()
    return read_shop(url), round(time.perf_counter() - started, 2)


def analyze(url: str) -> None:
    """PostgreSQL's planner statistics, as autovacuum would gather them within a minute or so:
    right after a bulk fill the tables have none and plans differ (`--no-analyze` keeps it so)."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
    finally:
        engine.dispose()


def backfill(legacy_url: str, catalog_url: str, folder: Path) -> list[dict[str, Any]]:
    """Categories, then products, through the real sync CLI (`strangler sync backfill`)."""
    done = []
    for declaration in SYNCS:
        args = [PY, "-m", "proxy", "sync", "backfill", "--sync", str(declaration)]
        args += ["--legacy-db", legacy_url, "--service-db", catalog_url]
        args += ["--migrate", "--quiet", "--json"]
        started = time.perf_counter()
        code, output = Child(f"backfill {declaration.stem}", args, cwd=str(folder)).run_to_end(
            BACKFILL_TIMEOUT
        )
        if code:
            raise RuntimeError(f"backfill {declaration.name} exited {code}:\n{output[-2000:]}")
        result = last_json(output, tail=800)
        if result.get("status") != "done":
            raise RuntimeError(f"backfill {declaration.name}: {result}")
        done.append(
            {
                "sync": declaration.name,
                "rows": result["rows"],
                "seconds": result["seconds"],
                "wall_seconds": round(time.perf_counter() - started, 2),
            }
        )
    return done


# --- the servers --------------------------------------------------------------------------------
DatabaseCpu = Callable[[], DatabaseSnapshot]


@dataclass(frozen=True)
class Server:
    """A started server and, on PostgreSQL, its database's backend processes' CPU (by pid)."""

    child: Child
    database_cpu: DatabaseCpu | None = None

    @property
    def url(self) -> str:
        return self.child.url


@dataclass(frozen=True)
class Redis:
    url: str
    stream: str
    instance: str


def start_servers(
    stack: contextlib.ExitStack,
    folder: Path,
    legacy_url: str,
    catalog_url: str,
    redis: Redis | None,
) -> dict[str, Child]:
    # The monolith's cache: its in-process LRU, whatever LEGACY_* this shell has.
    server = [PY, "-m", "legacy_monolith", "--host", "127.0.0.1", "--port", "0"]
    monolith = Child(
        MONOLITH,
        [*server, "--database-url", legacy_url],
        env={"LEGACY_REDIS_URL": "", "LEGACY_CACHE_ENABLED": "true"},
        cwd=str(folder),
    )
    args = [PY, "-m", "services.catalog", "--host", "127.0.0.1", "--port", "0"]
    args += ["--database-url", catalog_url]
    env = {"CATALOG_REDIS_URL": ""}
    if redis is not None:
        args += ["--redis-url", redis.url, "--instance", redis.instance]
        env = {"CATALOG_EVENTS_STREAM": redis.stream}
    catalog = Child(CATALOG, args, env=env, cwd=str(folder))
    for child in (monolith, catalog):
        child.start(timeout=STARTUP_TIMEOUT)
        stack.callback(child.stop)
    deadline = time.monotonic() + 15
    while True:  # the catalog's cache serves once its event consumer is connected
        ready = httpx.get(f"{catalog.url}/readyz", timeout=5).json()
        if ready.get("cache") == ("on" if redis else "off"):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the catalog's cache never reached the expected state: {ready}")
        time.sleep(0.2)
    return {MONOLITH: monolith, CATALOG: catalog}


def forget_stream(redis: Redis) -> None:
    """The bench's own event stream (and its consumer group) leave Redis with it."""
    import redis as redis_client

    with contextlib.suppress(Exception):
        client = redis_client.Redis.from_url(redis.url)
        client.delete(redis.stream)
        client.close()


# --- parity -------------------------------------------------------------------------------------
def check_parity(urls: dict[str, str], paths: list[str]) -> dict[str, Any]:
    """Status, body, ETag and Content-Type of every sampled answer, equal on both."""
    differences = []
    statuses: Counter[int] = Counter()
    with (
        httpx.Client(base_url=urls[MONOLITH], timeout=TIMEOUT) as old,
        httpx.Client(base_url=urls[CATALOG], timeout=TIMEOUT) as new,
    ):
        for path in paths:
            a, b = old.get(path), new.get(path)
            statuses[a.status_code] += 1
            keys = ("etag", "content-type")
            same = (
                a.status_code == b.status_code
                and a.content == b.content
                and all(a.headers.get(k) == b.headers.get(k) for k in keys)
            )
            if not same:
                at = next(
                    (
                        i
                        for i, (x, y) in enumerate(zip(a.content, b.content, strict=False))
                        if x != y
                    ),
                    min(len(a.content), len(b.content)),
                )
                differences.append(
                    {
                        "path": path,
                        "status": [a.status_code, b.status_code],
                        "first_difference_at": at,
                        MONOLITH: a.content[max(0, at - 60) : at + 60].decode(errors="replace"),
                        CATALOG: b.content[max(0, at - 60) : at + 60].decode(errors="replace"),
                        "etag": [a.headers.get("etag"), b.headers.get("etag")],
                    }
                )
    return {
        "checked": len(paths),
        "identical": len(paths) - len(differences),
        "statuses": dict(sorted(statuses.items())),
        "differences": differences[:5],
    }


# --- the load -----------------------------------------------------------------------------------
class Cursor:
    """One service's walk through a pool: the same order for both services."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.taken = 0

    def __next__(self) -> str:
        path = self.paths[self.taken % len(self.paths)]
        self.taken += 1
        return path

    @property
    def keys(self) -> int:
        return min(self.taken, len(self.paths))


@dataclass
class Round:
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    server_cpu: float
    client_cpu: float
    database_cpu: float | None  # PostgreSQL's backends serving this server (None: SQLite)
    database_sessions: int = 0  # PostgreSQL sessions this server opened during the round
    database_exact: bool = True  # no session opened on another database meanwhile
    error_samples: list[str] = field(default_factory=list)


async def drive(
    url: str, cursor: Cursor, seconds: float, concurrency: int, limit: int
) -> tuple[int, int, float, list[float], list[str]]:
    latencies: list[float] = []
    samples: list[str] = []
    errors = issued = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=TIMEOUT) as client:
        deadline = time.monotonic() + seconds
        started = time.perf_counter()

        async def worker() -> None:
            nonlocal errors, issued
            while issued < limit and time.monotonic() < deadline:
                issued += 1
                path = next(cursor)
                sent = time.perf_counter()
                try:
                    answer = await client.get(path)
                    status: str | int = answer.status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                latencies.append(time.perf_counter() - sent)
                if status != 200:
                    errors += 1
                    if len(samples) < 5:
                        samples.append(f"{status} {path}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return len(latencies), errors, elapsed, latencies, samples


def run_async(coroutine: Any) -> Any:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)


def measure(server: Server, cursor: Cursor, seconds: float, args: argparse.Namespace) -> Round:
    before = server.database_cpu() if server.database_cpu else None
    server_before, client_before = cpu_seconds(server.child.pid), time.process_time()
    done, errors, elapsed, latencies, samples = run_async(
        drive(server.url, cursor, seconds, args.concurrency, args.max_requests)
    )
    server_cpu = cpu_seconds(server.child.pid) - server_before
    client_cpu = time.process_time() - client_before
    found = Round(
        done, errors, elapsed, latencies, server_cpu, client_cpu, None, error_samples=samples
    )
    if server.database_cpu is not None and before is not None:
        after = server.database_cpu()
        found.database_cpu = after.cpu_since(before)
        found.database_sessions = after.sessions - before.sessions
        # Another database's backend that exited meanwhile would count as ours (`reaped`).
        found.database_exact = after.others == before.others
    return found


def summarize(rounds: list[Round], cursor: Cursor) -> dict[str, Any]:
    requests = sum(r.requests for r in rounds)
    seconds = sum(r.seconds for r in rounds)
    latencies = [x for r in rounds for x in r.latencies]
    server_cpu = sum(r.server_cpu for r in rounds)
    measured = [r.database_cpu for r in rounds if r.database_cpu is not None]
    database_cpu = sum(measured) if len(measured) == len(rounds) else None
    exact = all(r.database_exact for r in rounds)
    total_cpu = server_cpu + (database_cpu or 0.0)
    return {
        "requests": requests,
        "errors": sum(r.errors for r in rounds),
        "error_samples": [s for r in rounds for s in r.error_samples][:5],
        "seconds": round(seconds, 2),
        "rps": round(requests / seconds, 1) if seconds else 0.0,
        "p50_ms": round(pct(latencies, 0.50) * 1000, 2),
        "p99_ms": round(pct(latencies, 0.99) * 1000, 2),
        "cpu_ms_per_request": round(1000 * server_cpu / requests, 3) if requests else None,
        "database_cpu_ms_per_request": (
            round(1000 * database_cpu / requests, 3)
            if requests and database_cpu is not None
            else None
        ),
        "database_cpu_exact": exact,
        "database_sessions_opened": sum(r.database_sessions for r in rounds),
        "total_cpu_ms_per_request": round(1000 * total_cpu / requests, 3) if requests else None,
        "server_cores": round(server_cpu / seconds, 2) if seconds else None,
        "client_cores": round(sum(r.client_cpu for r in rounds) / seconds, 2) if seconds else None,
        "keys": cursor.keys,
        "pool": len(cursor.paths),
        "round_rps": [round(r.requests / r.seconds, 1) if r.seconds else 0.0 for r in rounds],
    }


def bench_pool(servers: dict[str, Server], pool: Pool, args: argparse.Namespace) -> dict[str, Any]:
    cursors = {name: Cursor(pool.paths) for name in SERVICES}
    rounds: dict[str, list[Round]] = {name: [] for name in SERVICES}
    seconds = max(0.5, args.seconds * pool.share)
    for number in range(args.rounds):
        order = SERVICES if number % 2 == 0 else SERVICES[::-1]
        for name in order:
            rounds[name].append(measure(servers[name], cursors[name], seconds, args))
    stats = {name: summarize(rounds[name], cursors[name]) for name in SERVICES}
    old, new = stats[MONOLITH], stats[CATALOG]
    log(
        f"  {pool.workload}/{pool.variant}: monolith {old['rps']:.0f} req/s, "
        f"catalog {new['rps']:.0f} req/s"
    )
    return {
        "workload": pool.workload,
        "variant": pool.variant,
        **stats,
        "ratio_catalog_to_monolith": {
            key: ratio(new[key], old[key])
            for key in ("rps", "p50_ms", "p99_ms", "total_cpu_ms_per_request")
        },
    }


def warm_up(servers: dict[str, Server], queries: Queries, args: argparse.Namespace) -> None:
    """Connections, pools and page caches, with the repeated sets (hits-to-be anyway)."""
    paths = [p for pool in queries.pools if pool.variant == "repeated" for p in pool.paths]
    for name in SERVICES:
        run_async(drive(servers[name].url, Cursor(paths), 1.0, args.concurrency, 2_000))


def bench_backend(
    backend: str,
    urls: dict[str, str],
    database_cpu: dict[str, DatabaseCpu] | None,
    folder: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    legacy_url, catalog_url = urls[MONOLITH], urls[CATALOG]
    log(f"{backend}: seeding ~{args.products:,} products")
    shop, seed_seconds = seed_monolith(legacy_url, args.products)
    log(f"{backend}: backfilling the catalog's read model (sync CLI)")
    backfills = backfill(legacy_url, catalog_url, folder)
    products_rows = backfills[-1]["rows"]
    if products_rows != shop.total:
        raise RuntimeError(f"the products backfill copied {products_rows}, not {shop.total}")
    analyzed = backend == "postgres" and args.analyze
    if analyzed:
        for url in urls.values():
            analyze(url)
    queries = make_queries(shop)
    result: dict[str, Any] = {
        "backend": backend,
        "products": shop.total,
        "active_products": len(shop.active),
        "categories": len(shop.categories),
        "seed_seconds": seed_seconds,
        "backfill": backfills,
        "analyzed": analyzed,
        "workloads": [],
    }
    redis = None
    if args.redis_url:
        tag = secrets.token_hex(4)
        redis = Redis(args.redis_url, f"catalog-bench:{tag}:events", f"catalog-bench-{tag}")
    with contextlib.ExitStack() as stack:
        if redis is not None:
            stack.callback(forget_stream, redis)
        children = start_servers(stack, folder, legacy_url, catalog_url, redis)
        servers = {
            name: Server(child, database_cpu[name] if database_cpu else None)
            for name, child in children.items()
        }
        parity = check_parity({n: s.url for n, s in servers.items()}, queries.parity)
        result["parity"] = parity
        if parity["identical"] != parity["checked"]:
            return result
        log(f"{backend}: {parity['checked']} sampled answers byte-identical; loading")
        warm_up(servers, queries, args)
        for pool in queries.pools:
            result["workloads"].append(bench_pool(servers, pool, args))
    return result


# --- the report ---------------------------------------------------------------------------------
def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def render(results: dict[str, Any]) -> str:
    config = results["config"]
    cache = (
        f"answer cache ON (Redis {config['redis_url']}, {config['catalog_cache_ttl']}s TTL)"
        if config["redis_url"]
        else "no Redis: answer cache hits checked against the read model's version"
    )
    lines = [
        f"catalog vs monolith: concurrency {config['concurrency']}, {config['rounds']} rounds x "
        f"{config['seconds']:g}s per service (detail, categories: half), interleaved",
        f"monolith: in-process LRU catalog cache (60s TTL); catalog: {cache}",
        f"{config['cpus']} CPUs; load average (1, 5, 15 min) {config['load_average_at_start']} "
        f"at the start, {results['load_average_at_end']} at the end",
    ]
    head = (
        f"  {'workload':<10} {'variant':<8} {'service':<8} {'requests':>8} {'err':>3} "
        f"{'keys':>6} {'req/s':>6} {'p50 ms':>6} {'p99 ms':>6} {'srv ms/req':>10} "
        f"{'db ms/req':>9} {'srv cores':>9} {'cli cores':>9}   {'req/s':>6} {'p99':>6} "
        f"{'cpu/req':>7}"
    )
    for backend in results["backends"]:
        parity = backend["parity"]
        lines.append(
            f"\n{backend['backend']}: {backend['products']:,} products "
            f"({backend['active_products']:,} active), {backend['categories']} categories; "
            f"parity {parity['identical']}/{parity['checked']} answers byte-identical "
            f"(statuses {parity['statuses']})"
            + ("; both databases ANALYZEd after the fill" if backend["analyzed"] else "")
        )
        for diff in parity["differences"]:
            lines.append(f"  DIFFERENT: {json.dumps(diff)}")
        if not backend["workloads"]:
            continue
        lines.append(f"{'':<117}catalog/monolith")
        lines.append(head)
        for row in backend["workloads"]:
            ratios = row["ratio_catalog_to_monolith"]
            for name in SERVICES:
                s = row[name]
                tail = ""
                if name == CATALOG:
                    tail = (
                        f"   {_ratio(ratios['rps']):>6} {_ratio(ratios['p99_ms']):>6} "
                        f"{_ratio(ratios['total_cpu_ms_per_request']):>7}"
                    )
                workload, variant = (
                    (row["workload"], row["variant"]) if name == MONOLITH else ("", "")
                )
                database = s["database_cpu_ms_per_request"]
                mark = "" if s["database_cpu_exact"] else "~"
                lines.append(
                    f"  {workload:<10} {variant:<8} "
                    f"{name:<8} {s['requests']:>8,} {s['errors']:>3} {s['keys']:>6,} "
                    f"{s['rps']:>6,.0f} {s['p50_ms']:>6.2f} {s['p99_ms']:>6.1f} "
                    f"{s['cpu_ms_per_request'] or 0:>10.3f} "
                    f"{'-' if database is None else f'{database:.3f}{mark}':>9} "
                    f"{s['server_cores']:>9.2f} {s['client_cores']:>9.2f}{tail}"
                )
                for sample in s["error_samples"]:
                    lines.append(f"    error: {sample}")
    lines.append(
        "\nkeys: distinct URLs asked (varied: fewer than requests means the pool was used up "
        "and repeated). srv ms/req: the server process's CPU per request (on SQLite the "
        "database's work included); db ms/req: PostgreSQL's backend processes serving it (~: "
        "another database opened sessions meanwhile, whose exits may be counted in); "
        "cpu/req: the ratio of the two summed. srv cores: the server's CPU over wall time (one "
        "worker: ~1.0 at most); cli cores: this client's (near 1.0: the client may be the limit)."
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.catalog_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--backend", choices=("sqlite", "postgres", "both"), default="both")
    add("--seconds", type=bounded(0.5, 60, float), default=3.0, help="per round (3)")
    add("--rounds", type=bounded(1, 10, int), default=2, help="rounds per service (2)")
    add("--concurrency", type=bounded(1, 64, int), default=8, help="requests in flight (8)")
    add("--products", type=bounded(14, 100_000, int), default=5_000, help="seeded (5000)")
    add("--max-requests", type=bounded(100, 200_000, int), default=50_000, help="per round")
    add(
        "--no-analyze",
        dest="analyze",
        action="store_false",
        help="PostgreSQL: leave both databases without planner statistics (fresh from the fill)",
    )
    add("--redis-url", help="give the catalog Redis (its answer cache on); local only")
    add("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.redis_url and make_url_host(args.redis_url) not in LOCAL_HOSTS:
        parser.error("--redis-url must name a local host (127.0.0.1)")
    return args


def make_url_host(url: str) -> str | None:
    return httpx.URL(url).host or None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupted)  # a SIGTERM cleans up as Ctrl-C does
    started = time.monotonic()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    results: dict[str, Any] = {
        "config": {
            "backends": backends,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "products_asked": args.products,
            "per_page": PER_PAGE,
            "redis_url": args.redis_url,
            "catalog_cache_ttl": CatalogSettings().cache_ttl,
            "monolith_cache": "in-process LRU, 60 s",
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "load_average_at_start": load_average(),
        },
        "backends": [],
    }
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="catalog-bench-")))
        for backend in backends:
            database_cpu: dict[str, DatabaseCpu] | None = None
            if backend == "sqlite":
                urls = {
                    MONOLITH: f"sqlite:///{folder / 'legacy.db'}",
                    CATALOG: f"sqlite:///{folder / 'catalog.db'}",
                }
            else:
                pg = Postgres(POSTGRES_ADMIN)
                stack.callback(pg.drop_all)
                tag = secrets.token_hex(4)
                names = {name: f"catalog_bench_{tag}_{name}" for name in SERVICES}
                urls = {name: pg.create(names[name]) for name in SERVICES}
                database_cpu = {
                    name: partial(database_snapshot, pg, names[name]) for name in SERVICES
                }
            results["backends"].append(bench_backend(backend, urls, database_cpu, folder, args))
            if not results["backends"][-1]["workloads"]:
                break  # the answers differ: no load
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    results["load_average_at_end"] = load_average()
    differ = any(b["parity"]["identical"] != b["parity"]["checked"] for b in results["backends"])
    failed = sum(
        row[name]["errors"]
        for b in results["backends"]
        for row in b["workloads"]
        for name in SERVICES
    )
    results["ok"] = not differ and not failed
    print(json.dumps(results, indent=2) if args.json else render(results))
    if not args.json:
        print(f"\n{results['wall_seconds']:.0f}s in all")
    if differ:
        log("ABORTED: the catalog's answers differ from the monolith's (see above)")
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
