"""A route's `rollout:` block: how `strangler rollout start` moves it to another upstream, step by
step, on evidence (pure: no I/O). The command's flags (or the admin API's body) override it.

    rollout:
      to: payment
      steps: [1, 5, 25, 50, 100]          # the new upstream's share at each step
      bake: 2m                            # how long each step serves before its analysis
      analysis:
        max_error_rate_delta: 0.01        # new minus legacy 5xx rate (1 point)
        max_p95_ratio: 1.5                # new p95 / legacy p95
        max_p99_ratio: 2.0
        max_shadow_mismatch: 0.01         # shadowed routes: share of copies that differ
        min_requests: 20                  # per arm and step; fewer is a quiet step
        threshold: 1                      # failed analyses before the rollback
        quiet_limit: 3                    # extra bakes a quiet step gets before it fails
        interval: 10s                     # analyses during the bake (fail fast); 0: off
        settle: 5s                        # skipped at each step's start
        latency_floor: 25ms               # latencies below count as this much
      webhooks:
        - {kind: pre-rollout, url: "http://ci.internal/smoke", timeout: 5s}

Rules, with their precedents:
- Steps are the new upstream's weight in percent, strictly increasing; a list that does not end
  at 100 gets 100 added: a rollout ends with the route moved (Flagger promotes after its
  maxWeight; a maxWeight that is not a step once left canaries at 50 % reported as promoted,
  Flagger issue #189).
- `threshold` is Flagger's: the number of failed analyses at one step before the rollback. 1 by
  default: on a migration the new arm's errors are users' errors, so the first failed analysis
  rolls back; raise it for noisy checks. A failed analysis under the threshold starts the
  step's window again, so the next one judges fresh numbers.
- A step with fewer than `min_requests` on either arm is quiet: it cannot pass on no data. It
  bakes again, up to `quiet_limit` times; then it counts as a failed analysis (Flagger counts
  "no values found" as a failed check; Argo Rollouts' inconclusiveLimit).
- `latency_floor`: latency ratios of a few milliseconds are noise (a scheduler hiccup doubles
  them), not a regression a user sees; both sides count as at least this much.
- `settle` (5 s: one bucket of the proxies' per-arm numbers, and well over the 1 s in which
  every replica serves a new version) is left out of each step's window.
- Webhooks are Flagger's kinds, called with a JSON body: `pre-rollout` before the first step (a
  refusal fails the rollout, nothing moved), `rollout` before each step and `confirm-promotion`
  before the last (a refusal waits and asks again), `post-rollout` and `rollback` (notices:
  a failure is only recorded). A webhook URL follows the gates' rules: http(s), no credentials,
  never a link-local or cloud-metadata address (the control plane POSTs to it).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from proxy.table.fields import Duration, Strict

HOOK_KINDS = ("pre-rollout", "rollout", "confirm-promotion", "post-rollout", "rollback")
HookKind = Literal["pre-rollout", "rollout", "confirm-promotion", "post-rollout", "rollback"]
DEFAULT_STEPS = (1, 5, 25, 50, 100)
DEFAULT_BAKE = 120.0
# Flagger's webhook timeout default is 10 s; a gate is given 5 s here (table/gates.py), and a
# hook that holds a step longer than that is as good as down.
DEFAULT_HOOK_TIMEOUT = 5.0


def check_webhook_url(url: str) -> str | None:
    """Why `url` cannot be a rollout webhook, or None: the gates' rules (an http(s) URL, no
    credentials, no link-local, metadata or unconnectable address)."""
    from proxy.table.validate import check_upstream_url

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"{url!r} is not a URL: {exc}"
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return f"{url!r}: a webhook is an http:// or https:// URL"
    if port == 0:
        return f"{url!r}: port 0 is not a port"
    if parts.username or parts.password:
        return f"{url!r}: credentials do not belong in a webhook URL"
    if check_upstream_url(f"{parts.scheme}://{parts.netloc}") is not None:
        return f"{url!r}: link-local, metadata and unconnectable addresses are never webhooks"
    return None


def shown_url(url: str) -> str:
    """A webhook URL as status output shows it: its origin only (chat webhooks carry their
    secret in the path)."""
    parts = urlsplit(url)
    rest = "/…" if parts.path not in {"", "/"} or parts.query else ""
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{rest}"


class Webhook(Strict):
    kind: HookKind
    url: str
    timeout: Duration = DEFAULT_HOOK_TIMEOUT

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if (why := check_webhook_url(value)) is not None:
            raise ValueError(why)
        return value

    def public(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": shown_url(self.url), "timeout": self.timeout}


def _seconds_or_off(value: object) -> object:
    """`interval: 0` (or `off`) switches the analyses during a bake off."""
    if value in (0, "0", "off", False):
        return 0.0
    from proxy.table.units import parse_duration

    return parse_duration(value)


def _seconds_or_zero(value: object) -> object:
    if value in (0, "0", "0s", "0ms"):
        return 0.0
    from proxy.table.units import parse_duration

    return parse_duration(value)


class Thresholds(Strict):
    """What each step's analysis checks (module header)."""

    max_error_rate_delta: float = Field(0.01, ge=0, le=1)
    max_p95_ratio: float = Field(1.5, ge=1, le=1000)
    max_p99_ratio: float = Field(2.0, ge=1, le=1000)
    max_shadow_mismatch: float = Field(0.01, ge=0, le=1)
    min_requests: int = Field(20, ge=1, le=10_000_000)
    threshold: int = Field(1, ge=1, le=100)
    quiet_limit: int = Field(3, ge=0, le=1000)
    interval: float = Field(10.0, ge=0, le=86_400)
    settle: float = Field(5.0, ge=0, le=3_600)
    latency_floor: float = Field(0.025, ge=0, le=60)

    @field_validator("interval", mode="before")
    @classmethod
    def _interval(cls, value: object) -> object:
        return _seconds_or_off(value)

    @field_validator("settle", "latency_floor", mode="before")
    @classmethod
    def _zero_or_duration(cls, value: object) -> object:
        return _seconds_or_zero(value)


THRESHOLD_FIELDS = tuple(Thresholds.model_fields)


class RolloutPlan(Strict):
    """A route's `rollout:` block; `to` may be left to the command that starts it."""

    to: str | None = None
    steps: tuple[int, ...] = DEFAULT_STEPS
    bake: Duration = Field(DEFAULT_BAKE, le=7 * 86_400)
    analysis: Thresholds = Thresholds()
    webhooks: tuple[Webhook, ...] = ()

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value:
            raise ValueError("name at least one step (a weight in percent)")
        for weight in value:
            if not 1 <= weight <= 100:
                raise ValueError(f"step {weight} is not a weight within 1-100")
        if any(b <= a for a, b in pairwise(value)):
            raise ValueError("steps grow strictly: each gives the new upstream more traffic")
        return value if value[-1] == 100 else (*value, 100)

    def hooks(self, kind: str) -> list[Webhook]:
        return [hook for hook in self.webhooks if hook.kind == kind]


def resolve_plan(block: RolloutPlan | None, overrides: dict[str, Any]) -> RolloutPlan:
    """The route's block (or the defaults) with `overrides` (a command's flags, the API's
    body: `to`, `steps`, `bake`, `webhooks` and any threshold, by name) put over it; the
    result is validated whole (pydantic's ValidationError says what is wrong)."""
    base = (block or RolloutPlan()).model_dump()
    analysis = dict(base["analysis"])
    for name, value in overrides.items():
        if value is None:
            continue
        if name in THRESHOLD_FIELDS:
            analysis[name] = value
        elif name == "analysis" and isinstance(value, dict):
            analysis.update({k: v for k, v in value.items() if v is not None})
        else:
            base[name] = value
    base["analysis"] = analysis
    return RolloutPlan.model_validate(base)
