"""The stale-read bound while staff edit prices: commands stay on the monolith (staff product
edits, stock taken by orders) and the catalog shows them within the products declaration's lag
budget (its gate's `max_lag`, 5 s), measured end to end with real parts:

- the monolith as its operators run it (`python -m legacy_monolith`, a child process) on a
  seeded database, asked over HTTP: a staff user PATCHes the prices of a few products of one
  category, a dozen edits over a few seconds, and a customer orders one of its products (cart,
  then order), which takes stock;
- the catalog service (uvicorn in a thread) on its own database, filled by the toolkit's
  backfill and kept by continuous `datasync.incremental.follow` threads for products and for
  categories, at their declared interval and safety delay;
- a real Redis, with the catalog's answer cache on: follow's outbox rows go through the app's
  relay to the event stream (a stream and consumer group of the test's own), whose events clear
  the cache, so the relay, the stream and the invalidation are part of what is measured;
- a reader GETting each edited product and the category's list page from the catalog, without
  pause, recording every answer.

Asserted, for each change (PATCH or order) and each view of the product (its detail and the
list holding it): the catalog shows the new value (or a later one of the same product) within
`max_lag` of the moment the command was sent: an upper bound of the true delay, which starts
at the commit, a little later. Each view never goes back to an older value once it showed a
newer one (monotonic reads, per product and view, as one client reading one replica sees
them), no answer holds a value nobody set, and the ETag changes whenever the body does (one
ETag per body). Afterwards the catalog answers the monolith's bytes, every outbox row was
published to the stream, and the cache both served hits and was cleared by the events.

Printed (`pytest -s`): the measured delays (max and median, per view), how many changes were
shown only through a later edit of the same product (none expected: see EDIT_GAP), and how
often one view showed a product older than the other view had already shown it (counted, not
asserted: the two answers are cached apart, so between a poll's commit and its event one can be
read afresh while the other is still served from the cache). On SQLite and PostgreSQL.

This is a correctness bound, not a benchmark: the delays are the declared follow interval and
safety delay (1 s each), the relay's interval and one stream read, well under the budget.
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from datasync.backfill import backfill
from datasync.engines import make_legacy_engine, make_service_engine
from datasync.incremental import follow
from datasync.spec import Spec
from legacy_monolith.seed import DEMO_PASSWORD, DEMO_USER, STAFF_USER
from proxy.procs import Child
from services.catalog.app import create_app
from services.catalog.db import migrate
from services.catalog.tables import outbox
from tests.services.catalog.conftest import (
    CATEGORIES,
    PRODUCTS,
    catalog_settings,
    database_url,
    seed_shop,
)
from tests.support import serving, wait_until

P = "/api/v1/products"
MAX_LAG = PRODUCTS.gate.max_lag  # the lag budget: 5 s
EDITED = 6  # products whose prices staff edit
ROUNDS = 2  # edits of each: a dozen in all
# Seconds between two edits: each product is edited every 2.7 s, so between two edits of one
# product it stays unchanged for longer than follow's safety delay plus its interval, and a
# poll reads each edit (follow reads a row in its state as of the poll, only once its change
# stamp is older than the safety delay: a row edited again within it is read in its later state).
EDIT_GAP = 0.45
ORDERED = 2  # units the customer orders


# --- what the reader sees ----------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    at: float  # time.monotonic() when the answer had arrived
    url: str
    status: int
    body: bytes
    etag: str | None

    @cached_property
    def products(self) -> dict[int, dict[str, Any]]:
        """The products the answer shows, by id (a detail's one, or a list's items)."""
        assert self.status == 200, (self.url, self.status, self.body[:300])
        data = json.loads(self.body)
        return {item["id"]: item for item in data.get("items", [data])}


class Reader(threading.Thread):
    """GETs `urls` from the catalog in turn, without pause, until stopped; keeps every answer."""

    def __init__(self, base_url: str, urls: list[str]) -> None:
        super().__init__(name="catalog-reader", daemon=True)
        self.base_url, self.urls = base_url, urls
        self.answers: list[Answer] = []
        self.error: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.base_url, timeout=10) as client:
                while not self.halt.is_set():
                    for url in self.urls:
                        got = client.get(url)
                        self.answers.append(
                            Answer(
                                time.monotonic(),
                                url,
                                got.status_code,
                                got.content,
                                got.headers.get("etag"),
                            )
                        )
        except BaseException as exc:  # reported by the test
            self.error = exc

    def stop(self) -> list[Answer]:
        self.halt.set()
        self.join(timeout=15)
        assert not self.is_alive(), "the reader did not stop"
        if self.error is not None:
            raise AssertionError(f"the reader failed: {self.error!r}") from self.error
        return list(self.answers)


@dataclass(frozen=True)
class Change:
    """A command sent to the monolith: a tracked member takes its `values[version]`."""

    version: int
    sent: float  # time.monotonic() before the request was sent
    answered: float  # ... and once its answer had arrived


@dataclass
class Tracked:
    """The values one member of a product has taken, in order (index = version)."""

    product: int
    key: str  # the product's member in the answers
    values: list[Any]
    urls: list[str] = field(default_factory=list)  # the views that show the product

    def version_of(self, value: Any) -> int:
        assert value in self.values, (
            f"product {self.product} showed {self.key} {value!r}, which nobody set "
            f"(set: {self.values})"
        )
        return self.values.index(value)


def timeline(answers: list[Answer], tracked: Tracked, url: str) -> list[tuple[float, int]]:
    """(arrival, version shown) of every answer of `url` showing the tracked product."""
    out = []
    for answer in answers:
        if answer.url != url:
            continue
        product = answer.products.get(tracked.product)
        assert product is not None, f"{url} lost product {tracked.product}"
        out.append((answer.at, tracked.version_of(product[tracked.key])))
    return out


def caught_up(answers: list[Answer], changes: list[tuple[Tracked, Change]]) -> bool:
    """Whether the latest answer of every view shows every change (or a later one)."""
    latest: dict[str, Answer] = {}
    for answer in reversed(answers):
        latest.setdefault(answer.url, answer)
    for track, change in changes:
        for url in track.urls:
            product = latest[url].products[track.product] if url in latest else None
            if product is None or track.version_of(product[track.key]) < change.version:
                return False
    return True


def delay(answers: list[Answer], tracked: Tracked, url: str, change: Change) -> float | None:
    """Seconds from sending the change to the first answer of `url` showing it (or a later
    version of the same member): None while none has."""
    for at, version in timeline(answers, tracked, url):
        if at >= change.sent and version >= change.version:
            return at - change.sent
    return None


# --- the parts ---------------------------------------------------------------------------------
@dataclass
class Stack:
    monolith: httpx.Client
    catalog: httpx.Client
    catalog_url: str
    app: Any
    service: Engine
    redis_url: str
    stream: str


class Followers:
    """`datasync.incremental.follow` for each declaration, in threads, as declared."""

    def __init__(self, specs: list[Spec], legacy: Engine, service: Engine) -> None:
        self.halt = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(
                target=self._follow, args=(spec, legacy, service), name=f"follow-{spec.name}"
            )
            for spec in specs
        ]

    def _follow(self, spec: Spec, legacy: Engine, service: Engine) -> None:
        try:
            follow(spec, legacy, service, stop=self.halt)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def __enter__(self) -> Followers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, failing: type[BaseException] | None, *_: object) -> None:
        self.halt.set()
        for thread in self.threads:
            thread.join(timeout=15)
        if failing is None:  # else the test's own failure is the one to report
            assert not any(t.is_alive() for t in self.threads), "a follower did not stop"
            assert not self.errors, f"a follower failed: {self.errors!r}"


@pytest.fixture(params=["sqlite", "postgres"])
def stack(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, redis_prefix: str
) -> Iterator[Stack]:
    legacy_url = database_url(request, tmp_path, "legacy")
    catalog_url = database_url(request, tmp_path, "catalog")
    seed_shop(legacy_url)
    legacy, service = make_legacy_engine(legacy_url), make_service_engine(catalog_url)
    migrate(service)
    for spec in (PRODUCTS, CATEGORIES):
        backfill(spec, legacy, service)
    stream = f"{redis_prefix}catalog:events"
    settings = catalog_settings(
        catalog_url, redis_url=redis_url, events_stream=stream, instance=f"{redis_prefix}reader"
    )
    app = create_app(settings)
    server = [sys.executable, "-m", "legacy_monolith", "--port", "0", "--database-url", legacy_url]
    try:
        with (
            Child("monolith", server, cwd=str(tmp_path)) as monolith,
            Followers([PRODUCTS, CATEGORIES], legacy, service),
            serving(app) as url,
            httpx.Client(base_url=monolith.url, timeout=10) as to_monolith,
            httpx.Client(base_url=url, timeout=10) as to_catalog,
        ):
            wait_until(
                lambda: to_catalog.get("/readyz").json()["cache"] == "on",
                what="the catalog's answer cache on",
            )
            yield Stack(to_monolith, to_catalog, url, app, service, redis_url, stream)
    finally:
        legacy.dispose()
        service.dispose()


# --- the commands ------------------------------------------------------------------------------
def login(monolith: httpx.Client, email: str) -> dict[str, str]:
    answer = monolith.post("/api/v1/auth/login", json={"email": email, "password": DEMO_PASSWORD})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def new_price(old: str, round_: int, index: int) -> str:
    """A price the product never had: the round and the product's index in the cents."""
    price = f"{1000 + 10 * round_ + index}.{11 * (round_ + 1) + index:02d}"
    assert price != old
    return price


@pytest.mark.redis
def test_staff_edits_and_orders_show_in_the_catalog_within_the_lag_budget(
    stack: Stack, request: pytest.FixtureRequest
) -> None:
    # The products: EDITED of one category, and one more in stock for the customer to order.
    first = stack.catalog.get(P, params={"per_page": 1}).json()["items"][0]
    listing = f"{P}?category_id={first['category_id']}&per_page=100"
    items = stack.catalog.get(listing).json()["items"]
    edited = items[:EDITED]
    ordered = next(item for item in items[EDITED:] if item["stock_qty"] >= ORDERED)
    assert len(edited) == EDITED
    prices = [
        Tracked(item["id"], "price", [item["price"]], [f"{P}/{item['id']}", listing])
        for item in edited
    ]
    for r in range(ROUNDS):
        for i, track in enumerate(prices):
            track.values.append(new_price(track.values[0], r, i))
    stock = Tracked(
        ordered["id"],
        "stock_qty",
        [ordered["stock_qty"], ordered["stock_qty"] - ORDERED],
        [f"{P}/{ordered['id']}", listing],
    )
    tracked = [*prices, stock]
    for track in tracked:  # the monolith agrees on the starting values
        start = stack.monolith.get(f"{P}/{track.product}").json()
        assert start[track.key] == track.values[0]

    staff = login(stack.monolith, STAFF_USER)
    customer = login(stack.monolith, DEMO_USER)
    added = stack.monolith.post(
        "/api/v1/cart/items",
        json={"product_id": stock.product, "quantity": ORDERED},
        headers=customer,
    )
    assert added.status_code == 201, added.text

    urls = [f"{P}/{track.product}" for track in tracked] + [listing]
    reader = Reader(stack.catalog_url, urls)
    reader.start()
    changes: list[tuple[Tracked, Change]] = []
    try:
        wait_until(lambda: len(reader.answers) >= 3 * len(urls), what="the reader's first answers")
        for r in range(ROUNDS):
            for track in prices:
                sent = time.monotonic()
                price = track.values[r + 1]
                done = stack.monolith.patch(
                    f"{P}/{track.product}", json={"price": price}, headers=staff
                )
                assert done.status_code == 200, done.text
                assert done.json()["price"] == price
                changes.append((track, Change(r + 1, sent, time.monotonic())))
                time.sleep(max(0.0, sent + EDIT_GAP - time.monotonic()))
            if r == 0:  # mid-way, the customer's order takes stock
                sent = time.monotonic()
                placed = stack.monolith.post("/api/v1/orders", json={}, headers=customer)
                assert placed.status_code == 201, placed.text
                changes.append((stock, Change(1, sent, time.monotonic())))

        deadline = changes[-1][1].sent + MAX_LAG + 1.0
        while not caught_up(list(reader.answers), changes) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        answers = reader.stop()

    # Every change visible in every view within the budget.
    delays: dict[str, list[float]] = {"detail": [], "list": []}
    late, overtaken = [], 0
    slowest = (0.0, "")
    for track, change in changes:
        for url in track.urls:
            took = delay(answers, track, url, change)
            view = "list" if url == listing else "detail"
            if took is None or took > MAX_LAG:
                late.append((track.key, track.product, change.version, view, took))
                continue
            delays[view].append(took)
            if took > slowest[0]:
                command = change.answered - change.sent
                what = f"{track.key} of {track.product} in the {view} (command {command:.2f}s)"
                slowest = (took, what)
            shown_versions = {version for _, version in timeline(answers, track, url)}
            overtaken += change.version not in shown_versions
    assert not late, f"changes not shown within {MAX_LAG}s: {late}"

    # Monotonic reads: no view of a product goes back to an older value.
    for track in tracked:
        for url in track.urls:
            versions = [version for _, version in timeline(answers, track, url)]
            back = [(a, b) for a, b in itertools.pairwise(versions) if b < a]
            assert not back, f"{url} went back for {track.key} of {track.product}: {back}"
    across = regressions_across_views(answers, tracked)

    # One ETag per body: the ETag changes whenever the body does, and only then.
    for url in urls:
        etags: dict[bytes, str | None] = {}
        bodies: dict[str | None, bytes] = {}
        for answer in answers:
            if answer.url == url:
                assert answer.etag is not None, url
                assert etags.setdefault(answer.body, answer.etag) == answer.etag, url
                assert bodies.setdefault(answer.etag, answer.body) == answer.body, url

    # Afterwards: the monolith's bytes, every outbox row published to the test's stream, the
    # cache used and cleared by the events.
    def same_bytes() -> bool:
        return all(
            stack.monolith.get(url).content == stack.catalog.get(url).content for url in urls
        )

    wait_until(same_bytes, timeout=MAX_LAG, what="the catalog to answer the monolith's bytes")
    with stack.service.connect() as conn:
        made, published = conn.execute(
            select(func.count(), func.count(outbox.c.published_at)).select_from(outbox)
        ).one()
    assert made == published, f"{made} outbox rows, {published} published"
    client = redis.Redis.from_url(stack.redis_url)
    entries: list[Any] = client.xrange(stack.stream)  # type: ignore[assignment]
    client.close()
    assert len(entries) == made
    assert {track.product for track in tracked} <= {int(f[b"aggregate_id"]) for _, f in entries}
    cache = stack.app.state.catalog.cache
    assert cache.hits > 0, "the cache served nothing"
    assert cache.clears >= made // 2, f"{made} events cleared the cache {cache.clears} times"

    every = delays["detail"] + delays["list"]
    print(
        f"\ncatalog freshness [{request.node.callspec.id}]: {len(changes) - 1} price edits and "
        f"1 order; {len(answers)} answers read, cache hits {cache.hits}, clears {cache.clears}, "
        f"{made} events; visible after (s, budget {MAX_LAG:g}): "
        + ", ".join(
            f"{view} max {max(values):.2f} p50 {statistics.median(values):.2f}"
            for view, values in delays.items()
        )
        + f"; all max {max(every):.2f} p50 {statistics.median(every):.2f}, the slowest "
        f"{slowest[1]}; "
        f"{overtaken} of {len(every)} shown only through a later edit; "
        f"{across} moments a view showed an older value than the other had"
    )


def regressions_across_views(answers: list[Answer], tracked: list[Tracked]) -> int:
    """How often a view showed a product's value older than one the other view had shown
    before: the two answers are cached apart, so between a poll's commit and its event one may
    be read afresh while the other is still served from the cache (counted, not asserted)."""
    count = 0
    for track in tracked:
        newest = -1
        for answer in answers:
            product = answer.products.get(track.product) if answer.url in track.urls else None
            if product is None:
                continue
            version = track.version_of(product[track.key])
            count += version < newest
            newest = max(newest, version)
    return count
