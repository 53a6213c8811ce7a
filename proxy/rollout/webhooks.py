"""A rollout's webhooks (Flagger's): the driver POSTs JSON to each URL of a kind and reads the
status. The body:

    {"kind": "rollout", "route": "payments", "to": "payment", "from": "monolith",
     "step": 1, "steps": [1, 5, 25, 50, 100], "weight": 5, "state": "progressing",
     "reason": "why the rollout was started", "analysis": {...the last analysis...} | null}

What an answer means depends on the kind (table/rollout.py): a 2xx lets the rollout go on; a
refusal (another status, no answer within the hook's timeout) fails a `pre-rollout`, holds a
`rollout` or `confirm-promotion` until a later tick, and is only recorded for `post-rollout`
and `rollback`. Redirects are not followed (a hook that moved answers 3xx: a refusal), no proxy
from the environment is used, and the answer's body is read up to 2 KiB for the reason shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proxy.table.rollout import Webhook, shown_url

if TYPE_CHECKING:
    import aiohttp

    from proxy.rollout.model import Rollout

MAX_REASON = 2048  # bytes of a refusal's body kept as its reason


@dataclass(frozen=True)
class HookAnswer:
    kind: str
    url: str  # as shown (its origin)
    ok: bool
    status: int | None  # None: no answer
    reason: str

    def describe(self) -> str:
        if self.status is None:
            return f"{self.kind} webhook {self.url} did not answer ({self.reason})"
        if self.ok:
            return f"{self.kind} webhook {self.url} answered {self.status}"
        said = f": {self.reason}" if self.reason else ""
        return f"{self.kind} webhook {self.url} answered {self.status}{said}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "url": self.url,
            "ok": self.ok,
            "status": self.status,
            "reason": self.reason,
        }


def payload(kind: str, rollout: Rollout) -> dict[str, Any]:
    return {
        "kind": kind,
        "route": rollout.route,
        "to": rollout.to,
        "from": rollout.source,
        "step": rollout.step,
        "steps": list(rollout.steps),
        "weight": rollout.weight,
        "state": rollout.state,
        "reason": rollout.reason,
        "analysis": rollout.last_analysis,
    }


class Webhooks:
    """The driver's webhook caller: one aiohttp session, opened on first use."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                trust_env=False, cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._session

    async def call(self, kind: str, rollout: Rollout) -> list[HookAnswer]:
        """Every webhook of `kind` of `rollout`, in order, each with what it answered."""
        hooks = rollout.plan.hooks(kind)
        if not hooks:
            return []
        body = payload(kind, rollout)
        return [await self._one(hook, body) for hook in hooks]

    async def _one(self, hook: Webhook, body: dict[str, Any]) -> HookAnswer:
        import aiohttp

        shown = shown_url(hook.url)
        timeout = aiohttp.ClientTimeout(total=hook.timeout)
        try:
            async with self._client().post(
                hook.url, json=body, timeout=timeout, allow_redirects=False
            ) as answer:
                ok = 200 <= answer.status < 300
                said = b"" if ok else await answer.content.read(MAX_REASON)
                text = said.decode("utf-8", "replace").strip()
                return HookAnswer(hook.kind, shown, ok, answer.status, text)
        except TimeoutError:
            return HookAnswer(hook.kind, shown, False, None, f"no answer within {hook.timeout:g}s")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return HookAnswer(hook.kind, shown, False, None, str(exc) or type(exc).__name__)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
