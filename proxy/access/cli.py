"""`strangler consumers`: who may call through the proxy, and their credentials.

    strangler consumers add NAME [--group G]... [--subject DN]... [--jwt ISSUER=SUBJECT]...
                                 [--description TEXT] [--no-key] --reason WHY
    strangler consumers list | show NAME | history
    strangler consumers rotate-key NAME [--grace 24h] --reason WHY
    strangler consumers revoke NAME [--key KEY_ID] --reason WHY
    strangler consumers update NAME [--group G]... [--subject DN]... [--jwt ISSUER=SUBJECT]...
                                    [--description TEXT] [--clear groups|subjects|jwt] --reason WHY

Each command works on the consumer store (`--store file --consumers var/consumers.json`, or the
replicas' `--store redis://... --prefix strangler:consumers:`; STRANGLER_STORE,
STRANGLER_CONSUMERS and STRANGLER_CONSUMERS_PREFIX as `strangler serve` reads them), or through
a running proxy's admin API (`--admin URL`, token from STRANGLER_ADMIN_TOKEN). Both paths run
the same store operation (the admin API calls it for the remote one) and print the same answer.
A new key is printed once, with a line saying it will not be shown again: only its hash is kept.

Exit codes: 0 done, 1 refused (an unknown consumer or key, a duplicate name, a store or an API
that says no), 2 usage. With --json, one object on stdout; a failure is
{"ok": false, "error": {kind, message, details}}, as the routes commands print it.

Like proxy/commands.py, this module imports typer and the commands' signatures only: a command
imports the store, the admin client and the routes commands' helpers when it runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from proxy.access.consumers import Operation
    from proxy.admin.client import AdminClient
    from proxy.store.consumers import ConsumerStore

consumers_app = typer.Typer(
    no_args_is_help=True,
    help="Who may call through the proxy: consumers, their groups and credentials.",
)

StoreUrl = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="STRANGLER_STORE",
        help="'file' (the --consumers file) or the replicas' shared redis:// store.",
    ),
]
ConsumersFile = Annotated[
    Path,
    typer.Option(
        "--consumers",
        envvar="STRANGLER_CONSUMERS",
        help="With the file store: the consumers document (its audit log is kept beside it).",
    ),
]
Prefix = Annotated[
    str,
    typer.Option(
        "--prefix", envvar="STRANGLER_CONSUMERS_PREFIX", help="With a Redis store: its key prefix."
    ),
]
AdminUrl = Annotated[
    str | None,
    typer.Option(
        "--admin",
        envvar="STRANGLER_ADMIN",
        help="A running proxy's admin API (token from STRANGLER_ADMIN_TOKEN) instead of --store.",
    ),
]
Reason = Annotated[str, typer.Option("--reason", help="Why: kept in the audit log.")]
Author = Annotated[
    str | None, typer.Option("--author", envvar="STRANGLER_AUTHOR", help="Who [default: $USER].")
]
JsonFlag = Annotated[
    bool, typer.Option("--json", help="Machine-readable output (failures too: ok false).")
]
Groups = Annotated[
    list[str] | None, typer.Option("--group", help="A group it belongs to (repeat).")
]
Subjects = Annotated[
    list[str] | None,
    typer.Option(
        "--subject", help="Its client certificate's subject, e.g. 'CN=orders,O=shop' (repeat)."
    ),
]
Jwts = Annotated[
    list[str] | None,
    typer.Option("--jwt", help="ISSUER=SUBJECT of the JWTs it presents (repeat)."),
]
Description = Annotated[str | None, typer.Option("--description", help="What it is.")]
DEFAULT_FILE = Path("var/consumers.json")
DEFAULT_PREFIX = "strangler:consumers:"


@dataclass(frozen=True)
class _Where:
    """The store or the admin API a command works on, and how it answers."""

    store: str
    consumers: Path
    prefix: str
    admin: str | None
    json_output: bool

    def run(
        self,
        local: Callable[[ConsumerStore], Any],
        remote: Callable[[AdminClient], Any],
        author: str | None = None,
    ) -> Any:
        """`local(store)` or `remote(admin API)`; a refusal exits 1 with its reason."""
        from proxy.admin.client import AdminClient, AdminRefused
        from proxy.commands import _author, _failed
        from proxy.store.base import StoreError

        try:
            if self.admin:
                return remote(AdminClient(self.admin, _author(author)))
            from proxy.store.consumers import consumer_store

            store = consumer_store(self.store, self.consumers, self.prefix)
            try:
                return local(store)
            finally:
                store.close()
        except (AdminRefused, StoreError) as exc:
            raise _failed(exc, self.json_output, command="consumers") from None

    def write(
        self,
        operation: Operation,
        method: str,
        path: str,
        body: dict[str, Any],
        author: str | None,
        reason: str,
    ) -> None:
        """Apply `operation` to the store (or send `body` to the API) and print the answer."""
        import time

        from proxy.commands import _author

        def local(store: ConsumerStore) -> dict[str, Any]:
            result = store.apply(operation, author=_author(author), reason=reason)
            return result.as_dict(time.time())

        def remote(api: AdminClient) -> dict[str, Any]:
            answer: dict[str, Any] = api.call(method, path, json={**body, "reason": reason})
            return answer

        _print_write(self.run(local, remote, author), self.json_output)

    def usage(self, message: str) -> typer.Exit:
        from proxy.commands import _fail

        return _fail(message, 2, json_output=self.json_output, kind="usage", command="consumers")


def _path(name: str, *rest: str) -> str:
    from urllib.parse import quote

    return "/".join(["/api/v1/consumers", quote(name, safe=""), *rest])


def _pairs(where: _Where, values: list[str]) -> list[tuple[str, str]]:
    """ISSUER=SUBJECT values (an OpenID issuer has no '=': the first one separates)."""
    pairs = []
    for value in values:
        issuer, sep, subject = value.partition("=")
        if not sep or not issuer or not subject:
            raise where.usage(f"--jwt wants ISSUER=SUBJECT, not {value!r}")
        pairs.append((issuer, subject))
    return pairs


def _when(at: float | None) -> str:
    import time

    if at is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _print_write(result: dict[str, Any], json_output: bool) -> None:
    """What a write did (the store's and the API's answer alike), and its new key once."""
    if json_output:
        typer.echo(json.dumps(result))
        return
    entry = result["entry"]
    name = entry["consumer"]
    said = {
        "add": f"consumer {name} added",
        "rotate-key": f"new key {entry['key_id']} for {name}",
        "revoke": f"consumer {name} revoked",
        "revoke-key": f"key {entry['key_id']} of {name} revoked",
        "update": f"consumer {name} updated",
    }.get(entry["action"], f"{entry['action']} {name}")
    typer.echo(f"{said} (version {result['version']}): {entry['detail']}")
    key = result.get("key")
    if key:
        typer.echo(f"  key {key['id']}: {key['secret']}")
        typer.echo("  this key will not be shown again: store it now (only its hash is kept)")


def _summary(consumer: dict[str, Any]) -> str:
    live = [k for k in consumer["keys"] if k["live"]]
    parts = [f"{len(live)} key{'s' * (len(live) != 1)}"]
    expiring = sum(1 for k in live if k["expires"] is not None)
    if expiring:
        parts[0] += f" ({expiring} expiring)"
    if consumer["subjects"]:
        count = len(consumer["subjects"])
        parts.append(f"{count} subject{'s' * (count != 1)}")
    if consumer["jwt"]:
        parts.append(f"{len(consumer['jwt'])} JWT")
    return ", ".join(parts)


def _print_consumer(consumer: dict[str, Any]) -> None:
    described = f" ({consumer['description']})" if consumer["description"] else ""
    typer.echo(f"{consumer['name']}{described}")
    typer.echo(f"  created   {_when(consumer['created'])}")
    typer.echo(f"  groups    {', '.join(consumer['groups']) or '-'}")
    for i, key in enumerate(consumer["keys"]):
        if not key["live"]:
            state = f"expired {_when(key['expires'])}"
        elif key["expires"] is None:
            state = "no expiry"
        else:
            state = f"expires {_when(key['expires'])}"
        label = "keys" if i == 0 else ""
        typer.echo(
            f"  {label:<9} {key['id']}  {key['hint']}…  created {_when(key['created'])}  {state}"
        )
    if not consumer["keys"]:
        typer.echo("  keys      -")
    for i, subject in enumerate(consumer["subjects"]):
        typer.echo(f"  {'subjects' if i == 0 else '':<9} {subject}")
    for i, pair in enumerate(consumer["jwt"]):
        typer.echo(f"  {'jwt' if i == 0 else '':<9} {pair['issuer']}  {pair['subject']}")


@consumers_app.command("add")
def consumers_add(
    name: Annotated[str, typer.Argument(help="Its name: a-z, 0-9, '.', '_', '-'.")],
    reason: Reason,
    group: Groups = None,
    subject: Subjects = None,
    jwt: Jwts = None,
    description: Description = None,
    no_key: Annotated[
        bool, typer.Option("--no-key", help="Make no API key (it uses mTLS or JWT).")
    ] = False,
    author: Author = None,
    store: StoreUrl = "file",
    consumers: ConsumersFile = DEFAULT_FILE,
    prefix: Prefix = DEFAULT_PREFIX,
    admin: AdminUrl = None,
    json_output: JsonFlag = False,
) -> None:
    """Add a consumer; its first API key is printed once."""
    from proxy.access.consumers import Add

    where = _Where(store, consumers, prefix, admin, json_output)
    pairs = _pairs(where, jwt or [])
    operation = Add(
        name, tuple(group or []), tuple(subject or []), tuple(pairs), description or "", not no_key
    )
    body = {
        "name": name,
        "groups": list(operation.groups),
        "subjects": list(operation.subjects),
        "jwt": [{"issuer": i, "subject": s} for i, s in pairs],
        "description": operation.description,
        "key": operation.key,
    }
    where.write(operation, "POST", "/api/v1/consumers", body, author, reason)


@consumers_app.command("list")
def consumers_list(
    store: StoreUrl = "file",
    consumers: ConsumersFile = DEFAULT_FILE,
    prefix: Prefix = DEFAULT_PREFIX,
    admin: AdminUrl = None,
    json_output: JsonFlag = False,
) -> None:
    """Every consumer: its groups and how many credentials it has (never a key)."""
    import time

    where = _Where(store, consumers, prefix, admin, json_output)
    found: dict[str, Any] = where.run(
        lambda s: s.current().public(time.time()),
        lambda api: api.call("GET", "/api/v1/consumers"),
    )
    if json_output:
        typer.echo(json.dumps(found))
        return
    rows = found["consumers"]
    typer.echo(f"version {found['version']}: {len(rows)} consumer{'s' * (len(rows) != 1)}")
    width = max((len(c["name"]) for c in rows), default=0)
    groups_width = max((len(", ".join(c["groups"])) for c in rows), default=0)
    for consumer in rows:
        groups = ", ".join(consumer["groups"]) or "-"
        line = f"  {consumer['name']:<{width}}  {groups:<{groups_width}}  {_summary(consumer)}"
        typer.echo(line + (f"  {consumer['description']}" if consumer["description"] else ""))


@consumers_app.command("show")
def consumers_show(
    name: Annotated[str, typer.Argument(help="The consumer.")],
    store: StoreUrl = "file",
    consumers: ConsumersFile = DEFAULT_FILE,
    prefix: Prefix = DEFAULT_PREFIX,
    admin: AdminUrl = None,
    json_output: JsonFlag = False,
) -> None:
    """One consumer: groups, keys (id, hint, expiry), certificate subjects, JWT pairs."""
    import time

    from proxy.access.consumers import UnknownConsumer

    def local(source: ConsumerStore) -> dict[str, Any]:
        consumer = source.current().get(name)
        if consumer is None:
            raise UnknownConsumer(name)
        return consumer.public(time.time())

    where = _Where(store, consumers, prefix, admin, json_output)
    found: dict[str, Any] = where.run(local, lambda api: api.call("GET", _path(name)))
    if json_output:
        typer.echo(json.dumps(found))
        return
    _print_consumer(found)


@consumers_app.command("rotate-key")
def consumers_rotate_key(
    name: Annotated[str, typer.Argument(help="The consumer.")],
    reason: Reason,
    grace: Annotated[
        str,
        typer.Option(
            "--grace", help="How long its other keys keep working: 24h, 30m, 90s, 0 (at once)."
        ),
    ] = "24h",
    author: Author = None,
    store: StoreUrl = "file",
    consumers: ConsumersFile = DEFAULT_FILE,
    prefix: Prefix = DEFAULT_PREFIX,
    admin: AdminUrl = None,
    json_output: JsonFlag = False,
) -> None:
    """Give a consumer a new key (printed once); its other keys expire after the grace."""
    from proxy.access.consumers import RotateKey, parse_grace

    where = _Where(store, consumers, prefix, admin, json_output)
    try:
        seconds = parse_grace(grace)
    except ValueError as exc:
        raise where.usage(f"--grace: {exc}") from None
    body = {"grace": seconds}
    where.write(RotateKey(name, seconds), "POST", _path(name, "keys"), body, author, reason)


@consumers_app.command("revoke")
def consumers_revoke(
    name: Annotated[str, typer.Argument(help="The consumer.")],
    reason: Reason,
    key: Annotated[
        str | None,
        typer.Option("--key", help="Only this key (its id, k_...); else the whole consumer."),
    ] = None,
    author: Author = None,
    store: StoreUrl = "file",
    consumers: ConsumersFile = DEFAULT_FILE,
    prefix: Prefix = DEFAULT_PREFIX,
    admin: AdminUrl = None,
    json_output: JsonFlag = False,
) -> None:
    """Revoke one key, or the consumer with every credential it has (at once, everywhere)."""
    from proxy.access.consumers import Revoke

    where = _Where(store, consumers, prefix, admin, json_output)
    body = {"key_id": key}
    where.write(Revoke(name, key), "POST", _path(name, "revoke"), body, author, reason)


CLEARABLE = ("groups", "subjects", "jwt")


@consumers_app.command("update")
def consumers_update(
    name: Annotated[str, typer.Argument(help="The consumer.")],
    reason: Reason,
    group: Groups = None,
    subject: Subjects = None,
    jwt: Jwts = None,
    description: Description = None,
    clear: Annotated[
        list[str] | None,
        typer.Option("--clear", help="Remove every one of: groups, subjects or jwt (repeat)."),
    ] = None,
    author: Author = None,
    store: StoreUrl = "file",
    consumers: ConsumersFile = DEFAULT_FILE,
    prefix: Prefix = DEFAULT_PREFIX,
    admin: AdminUrl = None,
    json_output: JsonFlag = False,
) -> None:
    """Replace a consumer's groups, subjects, JWT pairs or description (those given)."""
    from proxy.access.consumers import Update

    where = _Where(store, consumers, prefix, admin, json_output)
    cleared = set(clear or [])
    unknown = sorted(cleared - set(CLEARABLE))
    if unknown:
        raise where.usage(f"--clear takes {', '.join(CLEARABLE)}, not {unknown[0]!r}")
    given: dict[str, list[Any]] = {}
    for field, values in (("groups", group), ("subjects", subject), ("jwt", jwt)):
        if values and field in cleared:
            raise where.usage(f"give {field} or --clear {field}, not both")
        if values or field in cleared:
            given[field] = list(values or [])
    if not given and description is None:
        raise where.usage(
            "nothing to update: give --group, --subject, --jwt, --description or --clear"
        )
    pairs = _pairs(where, given["jwt"]) if "jwt" in given else None
    operation = Update(
        name,
        tuple(given["groups"]) if "groups" in given else None,
        tuple(given["subjects"]) if "subjects" in given else None,
        tuple(pairs) if pairs is not None else None,
        description,
    )
    body: dict[str, Any] = {k: v for k, v in given.items() if k != "jwt"}
    if pairs is not None:
        body["jwt"] = [{"issuer": i, "subject": s} for i, s in pairs]
    if description is not None:
        body["description"] = description
    where.write(operation, "PATCH", _path(name), body, author, reason)


@consumers_app.command("history")
def consumers_history(
    limit: Annotated[int, typer.Option(help="How many changes, newest first.")] = 20,
    store: StoreUrl = "file",
    consumers: ConsumersFile = DEFAULT_FILE,
    prefix: Prefix = DEFAULT_PREFIX,
    admin: AdminUrl = None,
    json_output: JsonFlag = False,
) -> None:
    """The audit log: who changed which consumer, when and why (never a key)."""
    where = _Where(store, consumers, prefix, admin, json_output)
    if limit < 1:
        raise where.usage("--limit is at least 1")
    entries: list[dict[str, Any]] = where.run(
        lambda s: [entry.as_dict() for entry in s.history(limit)],
        lambda api: api.call("GET", "/api/v1/consumers/history", params={"limit": limit}),
    )
    if json_output:
        typer.echo(json.dumps(entries))
        return
    for entry in entries:
        key = f" {entry['key_id']}" if entry.get("key_id") else ""
        typer.echo(
            f"{entry['version']:>5}  {_when(entry['time'])}  {entry['author']:<12} "
            f"{entry['action']} {entry['consumer']}{key}: {entry['reason']}"
        )
        if entry.get("detail"):
            typer.echo(f"       {entry['detail']}")
