"""Per-arm statistics: requests, errors and latency per (route, upstream) in wall-clock buckets,
for the rollout analysis, the dashboard and the ledger's evidence (what a canary did).

A worker counts; the shadow sink carries each worker's counts to the others (one document per
worker, put once a second, expiring when the worker stops putting it); the pure functions below
merge any set of documents over a window, like Prometheus sums counters over instances.

Rules:
- **Buckets** of BUCKET seconds of wall-clock time (key = int(time.time() // BUCKET), so the
  workers and replicas of one fleet cut the same buckets); a worker keeps KEEP seconds of them.
  A window [since, until) takes the buckets whose start is in it: the current bucket counts
  while it fills, and a window of N seconds covers between N - BUCKET and N seconds.
- **An arm** is the route a request took and the upstream that answered it (the fallback when
  a fallback served it), as `strangler_requests_total` labels it. Only requests that were sent
  (or refused) on an upstream's behalf count: one refused before an upstream was tried (a
  401/403/429 of access, an unknown path, a 413), or answered by the proxy's own files (a
  static route), is no arm's.
- **An error** is a 5xx answer, the proxy's own 502/503/504 for a failing upstream included
  (unreachable, timed out, ejected, saturated), and an answer the upstream cut off after it
  had started (counted as a 502). A client that went away (499) is a request, not an error.
- **Latency** goes into a histogram with fixed bounds, BOUNDS: 30 log-spaced upper bounds from
  1 ms to 60 s (each ~1.46 times the previous) and one bucket above; p50, p95 and p99 are
  estimated from merged histograms by linear interpolation within the bucket holding the rank,
  as Prometheus' histogram_quantile does (the lowest bucket starts at 0; a rank in the bucket
  above 60 s is reported as 60 s). An estimate is within its bucket: ±23 % at most.
- **Cost on the hot path**: one clock read, one dict lookup and three list increments (the
  latency's bucket found by bisection); a new bucket every BUCKET seconds. A closed bucket's
  document is made once; the sink rewrites only the bucket that is still filling.
- **What the monolith still serves** (templates.py): the requests the default upstream answered,
  counted per path template in the same buckets and the same document.

The document (`ArmStats.doc()`), JSON-ready:

    {"v": 1, "bucket": 5,
     "buckets": {"<key>": {"arms": {ROUTE: {UPSTREAM: [requests, errors, {"<bound>": n}]}},
                           "paths": {"GET /api/v1/orders/{id}": n}}}}

the histogram sparse: the index of a bound in BOUNDS (len(BOUNDS): above the last) → count. A
document of another version ("v") is skipped by the merge, as is anything malformed in one.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.dataplane.templates import Templates
    from proxy.shadow.sink import Sink

VERSION = 1
BUCKET = 5  # seconds
KEEP = 900  # seconds of buckets a worker keeps: the longest window asked for
# 1 ms · 60,000^(i/29) for i in 0..29, to three significant digits.
BOUNDS: tuple[float, ...] = tuple(float(f"{0.001 * 60_000 ** (i / 29):.3g}") for i in range(30))
WIDTH = 2 + len(BOUNDS) + 1  # requests, errors, one count per bound, one above the last
QUANTILES = (0.5, 0.95, 0.99)

Row = list[int]  # [requests, errors, *histogram]


@dataclass(frozen=True)
class ArmSummary:
    """One arm over a window, every worker's counts together; latencies in seconds."""

    requests: int
    errors: int
    p50: float | None  # None when requests == 0
    p95: float | None
    p99: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 6),
            "p50": self.p50,
            "p95": self.p95,
            "p99": self.p99,
        }


class ArmStats:
    """One worker's counts. `observe` and `legacy` are the data plane's (one call each per
    request), `doc` the sharing task's (once a second)."""

    __slots__ = ("_arms", "_buckets", "_clock", "_docs", "_key", "_paths", "keep", "templates")

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        keep: float = KEEP,
        templates: Templates | None = None,
    ) -> None:
        from proxy.dataplane.templates import Templates  # which reads documents with ours

        self._clock = clock
        self.keep = int(keep // BUCKET) + 1  # buckets kept, the one filling included
        self.templates = templates if templates is not None else Templates()
        self._key = -1
        self._arms: dict[tuple[str, str], Row] = {}  # the current bucket's
        self._paths: dict[str, int] = {}
        self._buckets: dict[int, tuple[dict[tuple[str, str], Row], dict[str, int]]] = {}
        self._docs: dict[int, dict[str, Any]] = {}  # closed buckets' documents, made once

    def observe(self, route: str, upstream: str, status: int, seconds: float) -> None:
        """One answered request of the arm (route, upstream)."""
        key = int(self._clock() // BUCKET)
        if key != self._key:
            self._turn(key)
        row = self._arms.get((route, upstream))
        if row is None:
            row = self._arms[(route, upstream)] = [0] * WIDTH
        row[0] += 1
        if status >= 500:
            row[1] += 1
        row[2 + bisect_left(BOUNDS, seconds)] += 1

    def legacy(self, method: str, raw_path: bytes) -> None:
        """One request the default upstream answered, by its path's template (after `observe`,
        which has turned the bucket)."""
        name = self.templates.name(method, raw_path, self._key)
        paths = self._paths
        paths[name] = paths.get(name, 0) + 1

    def _turn(self, key: int) -> None:
        """A new bucket (a clock that went back keeps counting in the newest one)."""
        if key < self._key:
            return
        self._key = key
        self._arms, self._paths = {}, {}
        self._buckets[key] = (self._arms, self._paths)
        oldest = key - self.keep + 1
        for old in [k for k in self._buckets if k < oldest]:
            del self._buckets[old]
            self._docs.pop(old, None)
        self.templates.forget_before(oldest)

    def doc(self) -> dict[str, Any]:
        """Every kept bucket, JSON-ready (module header)."""
        oldest = int(self._clock() // BUCKET) - self.keep + 1
        buckets: dict[str, Any] = {}
        for key, (arms, paths) in self._buckets.items():
            if key < oldest:
                continue  # no request since it aged out: the next turn drops it
            if key == self._key:
                buckets[str(key)] = _bucket_doc(arms, paths)
                continue
            made = self._docs.get(key)
            if made is None:
                made = self._docs[key] = _bucket_doc(arms, paths)
            buckets[str(key)] = made
        return {"v": VERSION, "bucket": BUCKET, "buckets": buckets}


def _bucket_doc(arms: dict[tuple[str, str], Row], paths: dict[str, int]) -> dict[str, Any]:
    out: dict[str, dict[str, list[Any]]] = {}
    for (route, upstream), row in arms.items():
        histogram = {str(i): n for i, n in enumerate(row[2:]) if n}
        out.setdefault(route, {})[upstream] = [row[0], row[1], histogram]
    return {"arms": out, "paths": dict(paths)}


async def fleet_stats(
    sink: Sink, worker: str | None = None, local: ArmStats | None = None
) -> list[dict[str, Any]]:
    """Every live worker's document from the sink; `worker`'s own from `local` when given
    (fresher than what it put up to a second ago)."""
    docs = await sink.stats()
    if local is None or worker is None:
        return docs
    return [d for d in docs if d.get("worker") != worker] + [{**local.doc(), "worker": worker}]


# --- merging (pure) ---------------------------------------------------------------------------
def buckets_in(
    docs: Iterable[Mapping[str, Any]], since: float, until: float | None = None
) -> Iterator[Mapping[str, Any]]:
    """The buckets of every document (of this version) whose start is in [since, until)."""
    for doc in docs:
        try:
            if doc.get("v") != VERSION:
                continue
            size = int(doc["bucket"])
            for key, bucket in doc["buckets"].items():
                start = int(key) * size
                if start >= since and (until is None or start < until) and isinstance(bucket, dict):
                    yield bucket
        except (TypeError, ValueError, KeyError, AttributeError):
            continue


def _add(row: Row, cell: Any) -> None:
    """Add a document's [requests, errors, {index: n}] to `row` (a malformed cell adds nothing)."""
    try:
        requests, errors, histogram = int(cell[0]), int(cell[1]), cell[2]
        counts = [(int(i), int(n)) for i, n in histogram.items()]
    except (TypeError, ValueError, KeyError, IndexError, AttributeError):
        return
    if any(not 0 <= i <= len(BOUNDS) for i, _ in counts):
        return
    row[0] += requests
    row[1] += errors
    for i, n in counts:
        row[2 + i] += n


def quantile(q: float, histogram: list[int]) -> float | None:
    """The q-quantile of a histogram over BOUNDS (module header: histogram_quantile's
    interpolation); None when it is empty."""
    total = sum(histogram)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(histogram):
        if count and seen + count >= rank:
            if i == len(BOUNDS):
                return BOUNDS[-1]
            lower = BOUNDS[i - 1] if i else 0.0
            return round(lower + (BOUNDS[i] - lower) * (rank - seen) / count, 6)
        seen += count
    return BOUNDS[-1]  # pragma: no cover - the last non-empty bucket always holds the rank


def summary_of(row: Row) -> ArmSummary:
    histogram = row[2:]
    p50, p95, p99 = (quantile(q, histogram) for q in QUANTILES)
    return ArmSummary(row[0], row[1], p50, p95, p99)


def routes_window(
    docs: Iterable[Mapping[str, Any]], since: float, until: float | None = None
) -> dict[str, dict[str, ArmSummary]]:
    """Route → upstream → its summary over [since, until), every document merged."""
    rows: dict[str, dict[str, Row]] = {}
    for bucket in buckets_in(docs, since, until):
        arms = bucket.get("arms")
        if not isinstance(arms, dict):
            continue
        for route, upstreams in arms.items():
            if not isinstance(upstreams, dict):
                continue
            merged = rows.setdefault(route, {})
            for upstream, cell in upstreams.items():
                _add(merged.setdefault(upstream, [0] * WIDTH), cell)
    return {
        route: {upstream: summary_of(row) for upstream, row in sorted(arms.items())}
        for route, arms in sorted(rows.items())
    }


def arms_window(
    docs: Iterable[Mapping[str, Any]], route: str, since: float, until: float | None = None
) -> dict[str, ArmSummary]:
    """Upstream → its summary on `route` over [since, until), every document merged."""
    return routes_window(
        ({**doc, "buckets": _only_route(doc, route)} for doc in docs), since, until
    ).get(route, {})


def _only_route(doc: Mapping[str, Any], route: str) -> dict[str, Any]:
    """`doc`'s buckets narrowed to one route (merging the others would be wasted)."""
    try:
        return {
            key: {"arms": {route: bucket["arms"][route]}}
            for key, bucket in doc["buckets"].items()
            if route in bucket["arms"]
        }
    except (TypeError, KeyError, AttributeError):
        return {}
