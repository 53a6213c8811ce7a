"""The `strangler routes` commands' way to a remote proxy: its admin API (`--admin URL`, token
from STRANGLER_ADMIN_TOKEN). Returns the API's JSON; refusals become AdminRefused with the
problem's detail and, for an invalid table, each problem's line."""

from __future__ import annotations

import os
from typing import Any

import httpx


class AdminRefused(Exception):
    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class AdminClient:
    def __init__(self, base: str, author: str, token: str | None = None) -> None:
        self.base = base.rstrip("/")
        self.headers = {"X-Author": author}
        token = token if token is not None else os.environ.get("STRANGLER_ADMIN_TOKEN")
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        try:
            answer = httpx.request(method, self.base + path, headers=headers, timeout=30, **kwargs)
        except httpx.HTTPError as exc:
            raise AdminRefused(f"cannot reach the admin API at {self.base}: {exc}") from None
        if answer.status_code >= 400:
            try:
                problem = answer.json()
            except ValueError:
                raise AdminRefused(f"{answer.status_code} from the admin API") from None
            lines = [
                f"{p.get('line') or '-'}: {p.get('field')}: {p.get('message')}"
                for p in problem.get("problems", [])
            ]
            raise AdminRefused(str(problem.get("detail", answer.status_code)), lines)
        return answer.json()

    def current(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", "/api/v1/routes")
        return result

    def put(self, text: str, reason: str, expect: int, force: bool = False) -> dict[str, Any]:
        params: dict[str, Any] = (
            {"reason": reason, "force": "true"} if force else {"reason": reason}
        )
        result: dict[str, Any] = self.call(
            "PUT",
            "/api/v1/routes",
            params=params,
            content=text.encode(),
            headers={"Content-Type": "application/yaml", "If-Match": f'"{expect}"'},
        )
        return result
