"""The CLI's way to a remote proxy: its admin API (`--admin URL`, token from
STRANGLER_ADMIN_TOKEN). Returns the API's JSON; refusals become AdminRefused with the problem's
detail and, for an invalid table, each problem's line (the control plane's remote door,
proxy/control/remote.py, rebuilds the store's errors from them).

The standard library's urllib, not an HTTP client package: a rollback is typed in a hurry, and
importing one (and building its TLS context) took longer than the request. Like before, the
proxy environment variables (HTTPS_PROXY, NO_PROXY) apply and a redirect is not followed.
"""

from __future__ import annotations

import json as jsonlib
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from http.client import HTTPException
from typing import Any

from proxy.store.base import StoreError

TIMEOUT = 30.0  # seconds to connect, and for each read
NO_ANSWER = 502  # the status of a refusal without an answer from the admin API (a bad gateway)


class AdminRefused(StoreError):
    """The admin API refused (or could not be reached). `problems`: an invalid table's lines as
    the CLI prints them; `kind`: the problem's kind (`unreachable` when there was no answer);
    `status`: the HTTP status (NO_ANSWER when there was none, or none from the admin API);
    `body`: the problem as the API sent it."""

    def __init__(
        self,
        message: str,
        problems: list[str] | None = None,
        *,
        kind: str = "unreachable",
        status: int | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.problems = problems or []
        self.kind, self.body = kind, body or {}
        self.status = NO_ANSWER if status is None else status

    def details(self) -> list[Any]:
        """The problem's particulars: an invalid table's problems, the gates' answers, a
        request's validation errors."""
        for key in ("problems", "gates", "errors"):
            found = self.body.get(key)
            if isinstance(found, list) and found:
                return found
        return []


class _KeepRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer like any other: the API never sends one, so it is not followed
    (a write would be re-sent as a GET elsewhere)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class AdminClient:
    def __init__(self, base: str, author: str, token: str | None = None) -> None:
        self.base = base.rstrip("/")
        self.headers = {"X-Author": author, "Accept": "application/json"}
        token = token if token is not None else os.environ.get("STRANGLER_ADMIN_TOKEN")
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, object] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """`method` on `path` with query `params` and a `json` or raw `content` body; the
        answer's JSON."""
        url = self.base + path
        if params:
            url += "?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote)
        sent = {**self.headers, **(headers or {})}
        if json is not None:
            content = jsonlib.dumps(json).encode()
            sent["Content-Type"] = "application/json"
        if urllib.parse.urlsplit(url).scheme not in {"http", "https"}:
            raise AdminRefused(
                f"cannot reach the admin API at {self.base}: give an http:// or https:// URL"
            )
        request = urllib.request.Request(url, data=content, headers=sent, method=method)  # noqa: S310 (checked above)
        opener = urllib.request.build_opener(_KeepRedirects)
        try:
            try:
                with opener.open(request, timeout=TIMEOUT) as answer:
                    status, body = answer.status, answer.read()
            except urllib.error.HTTPError as exc:  # a status of 300 or more: its body says why
                with exc:
                    status, body = exc.code, exc.read()
        except urllib.error.URLError as exc:
            raise AdminRefused(f"cannot reach the admin API at {self.base}: {exc.reason}") from None
        except TimeoutError:  # the request may have been taken: a write may have landed
            raise AdminRefused(
                f"no answer from the admin API at {self.base} within {TIMEOUT:g}s: a write may "
                "have landed anyway; check `strangler routes history`",
                kind="unreachable",
            ) from None
        except (OSError, HTTPException, ValueError) as exc:
            raise AdminRefused(f"cannot reach the admin API at {self.base}: {exc}") from None
        if status >= 300:
            try:
                problem = jsonlib.loads(body)
            except ValueError:
                problem = None
            if not isinstance(problem, dict):
                raise AdminRefused(
                    f"{status} from the admin API", kind="http-error", status=status
                ) from None
            lines = [
                f"{p.get('line') or '-'}: {p.get('field')}: {p.get('message')}"
                for p in problem.get("problems", [])
            ]
            kind = str(problem.get("type") or "").rpartition(":")[2] or "http-error"
            raise AdminRefused(
                str(problem.get("detail", status)), lines, kind=kind, status=status, body=problem
            )
        try:
            return jsonlib.loads(body)
        except ValueError:  # e.g. the URL of a data-plane listener, not the admin API
            raise AdminRefused(
                f"{self.base} answered {status} without JSON: is it the admin API?",
                kind="bad-answer",
            ) from None
