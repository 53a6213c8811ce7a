"""docker-compose.yml and its files stay true to the code: every command line is one the CLIs
accept, the seeded route table is valid, and no secret is written down (no Docker engine is
needed to check that)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
from ruamel.yaml import YAML

from proxy.cli import app as strangler_app
from proxy.table.loader import load_file

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text())
    return document


def test_the_stack_has_every_part(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= {
        "oracle",
        "redis",
        "payment-db",
        "monolith",
        "payment",
        "proxy-1",
        "proxy-2",
        "proxy-3",
        "lb",
        "sync-follow",
        "sync-to-legacy",
        "sync-compensate",
        "catalog-db",
        "catalog",
        "catalog-sync-products",
        "catalog-sync-categories",
    }
    replicas = [s for name, s in compose["services"].items() if name.startswith("proxy-")]
    assert {tuple(s["command"].split()) for s in replicas} == {
        tuple(replicas[0]["command"].split())
    }, "the replicas run one command"


def test_the_proxy_command_is_one_strangler_serve_accepts(compose: dict[str, Any]) -> None:
    words = shlex.split(compose["services"]["proxy-1"]["command"])
    assert words[:2] == ["strangler", "serve"]
    assert "--store" in words
    assert words[words.index("--store") + 1].startswith("redis://")
    serve = typer.main.get_command(strangler_app).commands["serve"]  # type: ignore[attr-defined]
    serve.make_context("serve", words[2:])  # raises on an unknown option or a bad value


def test_the_seed_table_is_valid_and_names_the_stack(compose: dict[str, Any]) -> None:
    table = load_file(ROOT / "deploy" / "routes.compose.yaml")
    urls = {name: spec.url for name, spec in table.upstreams.items()}
    assert urls == {
        "monolith": "http://monolith:8001",
        "payment": "http://payment:8002",
        "catalog": "http://catalog:8003",
    }


def test_no_secret_is_written_down(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|TOKEN|SECRET", key):
                assert str(value).startswith("${"), f"{name}: {key} must come from the environment"
    assert not re.search(r"://\w+:(?!\$\{)[^@/\s]+@", text), "a password in a URL"


def test_the_sync_commands_are_ones_strangler_sync_accepts(compose: dict[str, Any]) -> None:
    from datasync.cli import app as sync_app

    group = typer.main.get_command(sync_app)
    syncs = ("sync-follow", "sync-to-legacy", "sync-compensate")
    for name in (*syncs, "catalog-sync-products", "catalog-sync-categories"):
        words = shlex.split(compose["services"][name]["command"])
        assert words[:2] == ["strangler", "sync"]
        command = group.commands[words[2]]  # type: ignore[attr-defined]
        command.make_context(words[2], words[3:])
        environment = compose["services"][name]["environment"]
        assert {"STRANGLER_LEGACY_DB", "STRANGLER_SERVICE_DB"} <= set(environment)
    assert "STRANGLER_SERVICE_TOKEN" in compose["services"]["sync-compensate"]["environment"]


def test_the_catalog_syncs_follow_their_declarations_into_the_catalogs_database(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    database = services["catalog"]["environment"]["CATALOG_DATABASE_URL"]
    for name, declaration in (
        ("catalog-sync-products", "products.yaml"),
        ("catalog-sync-categories", "categories.yaml"),
    ):
        environment = services[name]["environment"]
        assert environment["STRANGLER_SERVICE_DB"] == database  # the views live beside the rows
        sync = ROOT / environment["STRANGLER_SYNC"]
        assert sync == ROOT / "services" / "catalog" / "sync" / declaration
        assert sync.is_file()


def test_the_image_holds_every_package_the_stack_runs() -> None:
    from tomllib import loads

    copied = re.findall(r"^COPY (\w+) \./\1$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    packages = loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]
    assert set(packages["wheel"]["packages"]) <= set(copied)
