"""`--engine`: uvicorn's protocol (`asgi`) is gone; a script that still names the only engine
(`h1`) keeps working, one that asks for the removed one is told why and exits 2."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from proxy.commands import app

SERVE = ["serve", "--default-upstream", "http://127.0.0.1:9", "--internal-listen", "off"]


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The settings `serve` would run with, instead of running them."""
    calls: list[Any] = []
    monkeypatch.setattr("proxy.server.serve", lambda settings, announce: calls.append(settings))
    monkeypatch.delenv("STRANGLER_ENGINE", raising=False)
    return calls


def test_the_removed_engine_is_refused_with_its_reason(served: list[Any]) -> None:
    result = CliRunner().invoke(app, [*SERVE, "--engine", "asgi"])
    assert result.exit_code == 2
    assert "--engine asgi: removed, h1 is the only engine" in result.output
    assert served == []


def test_the_only_engine_may_still_be_named(served: list[Any]) -> None:
    result = CliRunner().invoke(app, [*SERVE, "--engine", "h1"])
    assert result.exit_code == 0, result.output
    assert len(served) == 1


def test_the_old_variable_is_said_to_be_ignored(
    served: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRANGLER_ENGINE", "asgi")
    result = CliRunner().invoke(app, SERVE)
    assert result.exit_code == 0, result.output
    assert "STRANGLER_ENGINE is no longer read" in result.output
    assert len(served) == 1
