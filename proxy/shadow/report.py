"""Shadow comparison results per route: a mergeable tally, the noise decision, the report.

Pure: no I/O. A worker keeps one Tally per route; tallies of workers and replicas merge by
adding (like Prometheus counters summed over instances), and travel as plain JSON.

Rules:
- **Per field**, how many compared requests differed in it, with the first EXAMPLES example
  pairs (values bounded by compare.py). At most MAX_FIELDS fields per route (Prometheus'
  advice against unbounded label values): later new fields are counted under
  "(other fields)", their examples prefixed with the field's name.
- **Signatures**: how many requests differed in exactly this set of fields, at most
  MAX_SIGNATURES sets (the rest count as mismatched). A request mismatches when its set has a
  field that is not noise, so fields learned as noise later leave the mismatch count too.
- **Noise** (Diffy's idea: compare a field's difference rate between primary and candidate with
  its rate between two primary answers): a field is noise when it differed between two primary
  answers at least MIN_NOISE_HITS times, and at that rate is at least half its rate between
  primary and candidate; so a field with MIN_NOISE_HITS hits that differs between two primary
  answers half the time or more is always noise. One or two hits are not enough, whatever
  the rates: a user's edit between the two requests to the primary makes one coincidental
  difference, and a field learned as noise from it would hide a real regression (1,000
  compared, 10 differing in `$.x`, 1 of 100 noise samples too: 1 % >= half of 1 %).
  "(other fields)" is never noise: it mixes fields.
- **Report**: per route the mismatch rate, failures, drops and the most frequent non-noise
  fields with one example each; the noise fields are listed as ignored, never hidden.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.shadow.compare import Verdict, printable

MAX_FIELDS = 100
MAX_SIGNATURES = 200
EXAMPLES = 3
OTHER_FIELDS = "(other fields)"
NOISE_SHARE = 0.5  # a field is noise when its noise rate is >= this share of its difference rate
MIN_NOISE_HITS = 3  # noise samples a field must differ in: one is a coincidence (module header)

Example = tuple[str, str]  # (primary, candidate)


@dataclass(slots=True)
class Tally:
    """One route's comparison results (in one worker, or merged)."""

    compared: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # shadow failures by kind
    dropped: int = 0  # copies not sent: the shadow queue was full
    skipped_truncated: int = 0  # compared without (all of) the body: truncated or too large
    noise_samples: int = 0  # requests sent to the primary twice
    differed: dict[str, int] = field(default_factory=dict)  # field → requests differing in it
    examples: dict[str, list[Example]] = field(default_factory=dict)
    noise: dict[str, int] = field(default_factory=dict)  # field → noise samples differing in it
    signatures: dict[frozenset[str], int] = field(default_factory=dict)
    other_signatures: int = 0  # mismatched requests whose field set was over MAX_SIGNATURES

    def add(self, verdict: Verdict) -> None:
        self.compared += 1
        if not verdict.compared_body:
            self.skipped_truncated += 1
        names: set[str] = set()
        for difference in verdict.differences:
            name = _capped(self.differed, difference.field)
            if name not in names:
                names.add(name)
                self.differed[name] = self.differed.get(name, 0) + 1
            self._example(name, difference.field, (difference.primary, difference.candidate))
        if names:
            self._signature(frozenset(names), 1)

    def add_failure(self, kind: str) -> None:
        self.failed[kind] = self.failed.get(kind, 0) + 1

    def add_dropped(self, n: int = 1) -> None:
        self.dropped += n

    def add_noise(self, fields: frozenset[str]) -> None:
        """One request answered twice by the primary, and the fields the answers differ in."""
        self.noise_samples += 1
        for name in {_capped(self.noise, f) for f in fields}:
            self.noise[name] = self.noise.get(name, 0) + 1

    def merge(self, other: Tally) -> None:
        self.compared += other.compared
        self.dropped += other.dropped
        self.skipped_truncated += other.skipped_truncated
        self.noise_samples += other.noise_samples
        self.other_signatures += other.other_signatures
        for kind, count in other.failed.items():
            self.failed[kind] = self.failed.get(kind, 0) + count
        renamed: dict[str, str] = {}
        for name, count in other.differed.items():
            mine = renamed[name] = _capped(self.differed, name)
            self.differed[mine] = self.differed.get(mine, 0) + count
            for example in other.examples.get(name, ()):
                self._example(mine, name, example)
        for name, count in other.noise.items():
            mine = _capped(self.noise, name)
            self.noise[mine] = self.noise.get(mine, 0) + count
        for signature, count in other.signatures.items():
            self._signature(frozenset(renamed.get(f, OTHER_FIELDS) for f in signature), count)

    def to_dict(self) -> dict[str, Any]:
        """The tally as JSON-ready data (from_dict reads it back)."""
        return {
            "compared": self.compared,
            "failed": dict(self.failed),
            "dropped": self.dropped,
            "skipped_truncated": self.skipped_truncated,
            "noise_samples": self.noise_samples,
            "fields": {
                name: {
                    "count": count,
                    "examples": [
                        {"primary": p, "candidate": c} for p, c in self.examples.get(name, ())
                    ],
                }
                for name, count in self.differed.items()
            },
            "noise": dict(self.noise),
            "signatures": [
                {"fields": sorted(signature), "count": count}
                for signature, count in self.signatures.items()
            ],
            "other_signatures": self.other_signatures,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tally:
        """A tally from to_dict's data; missing keys count as zero, the bounds are applied."""
        read = cls(
            compared=int(data.get("compared", 0)),
            failed={str(k): int(v) for k, v in data.get("failed", {}).items()},
            dropped=int(data.get("dropped", 0)),
            skipped_truncated=int(data.get("skipped_truncated", 0)),
            noise_samples=int(data.get("noise_samples", 0)),
            noise={str(k): int(v) for k, v in data.get("noise", {}).items()},
            other_signatures=int(data.get("other_signatures", 0)),
        )
        for name, entry in data.get("fields", {}).items():
            read.differed[str(name)] = int(entry.get("count", 0))
            read.examples[str(name)] = [
                (str(e.get("primary", "")), str(e.get("candidate", "")))
                for e in entry.get("examples", ())[:EXAMPLES]
            ]
        for entry in data.get("signatures", ()):
            signature = frozenset(str(f) for f in entry.get("fields", ()))
            if signature:
                count = int(entry.get("count", 0))
                read.signatures[signature] = read.signatures.get(signature, 0) + count
        tally = cls()
        tally.merge(read)
        return tally

    def _example(self, name: str, original: str, example: Example) -> None:
        kept = self.examples.setdefault(name, [])
        if len(kept) < EXAMPLES:
            primary, candidate = example
            if name == OTHER_FIELDS and original != OTHER_FIELDS:
                primary = f"{original}: {primary}"
            kept.append((primary, candidate))

    def _signature(self, signature: frozenset[str], count: int) -> None:
        if signature in self.signatures or len(self.signatures) < MAX_SIGNATURES:
            self.signatures[signature] = self.signatures.get(signature, 0) + count
        else:
            self.other_signatures += count


def _capped(counts: Mapping[str, int], name: str) -> str:
    """`name`, or OTHER_FIELDS when `counts` already holds MAX_FIELDS other fields."""
    if name in counts or name == OTHER_FIELDS:
        return name
    return name if len(counts) - (OTHER_FIELDS in counts) < MAX_FIELDS else OTHER_FIELDS


def noise_fields(tally: Tally) -> frozenset[str]:
    """The fields that differ between two primary answers about as often as between primary
    and candidate (see the module header)."""
    if not tally.noise_samples:
        return frozenset()
    noisy = set()
    for name, count in tally.noise.items():
        if name == OTHER_FIELDS or count < MIN_NOISE_HITS:
            continue
        noise_rate = count / tally.noise_samples
        rate = tally.differed.get(name, 0) / tally.compared if tally.compared else 0.0
        if noise_rate >= NOISE_SHARE * rate:
            noisy.add(name)
    return frozenset(noisy)


def mismatched(tally: Tally, noise: frozenset[str]) -> int:
    """Requests that differed in at least one field that is not noise."""
    listed = sum(count for fields, count in tally.signatures.items() if not fields <= noise)
    return listed + tally.other_signatures


def summarise(route: str, tally: Tally, top: int = 10) -> dict[str, Any]:
    """One route's results as JSON-ready data: the rates and the `top` non-noise fields."""
    noise = noise_fields(tally)
    bad = mismatched(tally, noise)
    fields = sorted(
        ((name, count) for name, count in tally.differed.items() if name not in noise),
        key=lambda item: (-item[1], item[0]),
    )
    return {
        "route": route,
        "compared": tally.compared,
        "mismatched": bad,
        "mismatch_rate": _rate(bad, tally.compared),
        "failed": dict(sorted(tally.failed.items())),
        "dropped": tally.dropped,
        "skipped_truncated": tally.skipped_truncated,
        "noise_samples": tally.noise_samples,
        "fields": [
            {
                "field": name,
                "count": count,
                "rate": _rate(count, tally.compared),
                "examples": [
                    {"primary": p, "candidate": c} for p, c in tally.examples.get(name, ())
                ],
            }
            for name, count in fields[:top]
        ],
        "noise": [
            {"field": name, "count": tally.noise[name]}
            for name in sorted(noise, key=lambda name: (-tally.noise[name], name))
        ],
    }


def _rate(count: int, total: int) -> float:
    return round(count / total, 4) if total else 0.0


def render(summaries: list[dict[str, Any]]) -> str:
    """summarise's data as plain text for a terminal, one block per route."""
    if not summaries:
        return "no shadow comparisons yet"
    return "\n\n".join("\n".join(_block(summary)) for summary in summaries)


def _percent(rate: float) -> str:
    return f"{rate * 100:.1f} %"


def _block(summary: Mapping[str, Any]) -> Iterable[str]:
    failed: Mapping[str, int] = summary.get("failed", {})
    kinds = ", ".join(f"{kind} {n}" for kind, n in failed.items())
    yield (
        f"{printable(str(summary.get('route', '?')))}: {summary.get('compared', 0)} compared, "
        f"{_percent(summary.get('mismatch_rate', 0.0))} differ ({summary.get('mismatched', 0)}), "
        f"{sum(failed.values())} failed{f' ({printable(kinds)})' if kinds else ''}, "
        f"{summary.get('dropped', 0)} dropped"
    )
    if summary.get("skipped_truncated"):
        yield (
            f"  {summary['skipped_truncated']} without the body compared "
            "(over the capture limit or too large): status and headers only"
        )
    for entry in summary.get("fields", ()):
        name = printable(str(entry.get("field", "?")))
        yield f"  {name}: {entry.get('count', 0)} ({_percent(entry.get('rate', 0.0))})"
        for example in entry.get("examples", ())[:1]:
            yield f"      primary:   {printable(str(example.get('primary', '')))}"
            yield f"      candidate: {printable(str(example.get('candidate', '')))}"
    samples = summary.get("noise_samples", 0)
    if samples:
        names = ", ".join(printable(str(e.get("field", "?"))) for e in summary.get("noise", ()))
        yield f"  noise (ignored): {names or 'none'} (learned from {samples} requests sent twice)"


def merge_snapshots(snapshots: list[dict[str, dict[str, Any]]]) -> dict[str, Tally]:
    """Every worker's snapshot (route → Tally.to_dict()) merged per route; a snapshot another
    version of strangler wrote, that does not read, is skipped."""
    merged: dict[str, Tally] = {}
    for snapshot in snapshots:
        for route, data in snapshot.items():
            try:
                tally = Tally.from_dict(data)
            except (ValueError, TypeError, AttributeError, KeyError):
                continue
            merged.setdefault(route, Tally()).merge(tally)
    return merged
