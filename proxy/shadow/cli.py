"""The shadow commands: `strangler shadow report`, `strangler record` and `strangler contract run`
(registered by proxy/commands.py). They reach the running proxies through the shadow sink, the
route store's place ("file": a directory under --state-dir on this host; a redis:// URL: the
Redis the replicas share), so they need the proxy's --store, --prefix and --state-dir.

Exit codes: 0 done (a contract within its threshold), 1 failed (nothing recorded, a contract over
its threshold, the sink unreachable), 2 a usage error or a corpus that cannot be replayed.

Every `strangler` command builds these commands: the sink, the recorder, the replayer (and
asyncio) are imported by the command that uses them, never here.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from proxy.store.base import DEFAULT_PREFIX

shadow_app = typer.Typer(no_args_is_help=True)
contract_app = typer.Typer(no_args_is_help=True)


# A callback each: the commands stay subcommands (`contract run`) even while each group has one.
@shadow_app.callback()
def shadow_group() -> None:
    """What the shadow services answered differently, per route."""


@contract_app.callback()
def contract_group() -> None:
    """Replay a recorded corpus against a service, as a contract test."""


POLL = 0.2  # seconds between two looks at a recording
PROGRESS = 5.0  # seconds between two progress lines
FLUSH_GRACE = 1.5  # the workers send what they captured once a second: wait one more send
MAX_COUNT = 10_000
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token (method, header name)

Store = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="STRANGLER_STORE",
        help="The proxy's store: 'file' (this host) or the replicas' shared redis:// URL.",
    ),
]
Prefix = Annotated[
    str,
    typer.Option(
        "--prefix", "--store-prefix", envvar="STRANGLER_STORE_PREFIX", help="Redis key prefix."
    ),
]
StateDir = Annotated[
    Path,
    typer.Option(
        "--state-dir",
        envvar="STRANGLER_STATE_DIR",
        help="The proxy's state directory (with --store file).",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _fail(command: str, message: str, code: int = 1) -> NoReturn:
    typer.echo(f"strangler {command}: {message}", err=True)
    raise typer.Exit(code)


def _seconds(command: str, option: str, value: str) -> float:
    from proxy.table.units import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        _fail(command, f"{option}: {exc}", 2)


# --- strangler shadow report ----------------------------------------------------------------
def _where(store: str, prefix: str, state_dir: Path) -> str:
    """Where the sink is, for a message that found nothing there."""
    if store == "file":
        return f"{state_dir / 'shadow'}: the proxy's --state-dir? replicas share --store redis://"
    from proxy.store.redis import describe

    return f"{describe(store)} under the prefix {prefix!r}: the proxy's --store and --prefix?"


async def _merged(store: str, prefix: str, state_dir: Path) -> dict[str, Any]:
    from proxy.shadow.report import merge_snapshots
    from proxy.shadow.sink import open_sink

    sink = open_sink(store, prefix, state_dir)
    try:
        return merge_snapshots(await sink.tallies())
    finally:
        await sink.close()


async def _clear(store: str, prefix: str, state_dir: Path, route: str | None) -> None:
    from proxy.shadow.sink import open_sink

    sink = open_sink(store, prefix, state_dir)
    try:
        await sink.clear_tallies(route)
    finally:
        await sink.close()


@shadow_app.command("report")
def report(
    route: Annotated[str | None, typer.Argument(help="Only this route.")] = None,
    json_output: JsonFlag = False,
    store: Store = "file",
    prefix: Prefix = DEFAULT_PREFIX,
    state_dir: StateDir = Path("var"),
    top: Annotated[int, typer.Option(min=1, help="Fields listed per route.")] = 10,
    reset: Annotated[
        bool, typer.Option("--reset", help="Then forget these comparisons (start counting anew).")
    ] = False,
) -> None:
    """Every worker's shadow comparisons, merged per route: how often the shadow differed, in
    which fields, with examples; the fields learned as noise are listed as ignored."""
    import asyncio

    from proxy.shadow.report import render, summarise
    from proxy.shadow.sink import SinkError

    try:
        merged = asyncio.run(_merged(store, prefix, state_dir))
    except SinkError as exc:
        _fail("shadow report", str(exc))
    routes = sorted(merged) if route is None else [r for r in merged if r == route]
    summaries = [summarise(name, merged[name], top) for name in routes]
    if json_output:
        typer.echo(json.dumps(summaries))
    elif route is not None and not summaries:
        typer.echo(f"no shadow comparisons for {route} yet")
    else:
        typer.echo(render(summaries))
    if not merged:
        typer.echo(f"  (read {_where(store, prefix, state_dir)})", err=True)
    if reset:
        try:
            asyncio.run(_clear(store, prefix, state_dir, route))
        except SinkError as exc:
            _fail("shadow report", f"printed, but not reset: {exc}")
        typer.echo(
            f"shadow comparisons {'of ' + route if route else 'of every route'} reset",
            err=json_output,
        )


# --- strangler record -----------------------------------------------------------------------
def _methods(value: str) -> tuple[str, ...]:
    methods = tuple(m.strip().upper() for m in value.split(",") if m.strip())
    bad = [m for m in methods if not _TOKEN.match(m)]
    if bad or not methods:
        _fail("record", f"--methods wants method names like GET,HEAD, not {value!r}", 2)
    return methods


async def _record(
    route: str,
    count: int,
    methods: tuple[str, ...],
    seconds: float,
    out: Path,
    sink_args: tuple[str, str, Path],
) -> int:
    """Arm, wait, write; the number of pairs written. The recording is disarmed however this
    ends (Ctrl-C included)."""
    import asyncio

    from proxy.shadow.recording import write_corpus
    from proxy.shadow.sink import open_sink

    sink = open_sink(*sink_args)
    try:
        recording = await sink.arm(route, count, methods, seconds)
        try:
            started = time.monotonic()
            deadline, shown, held = started + seconds, started, 0
            while held < count and time.monotonic() < deadline + FLUSH_GRACE:
                await asyncio.sleep(POLL)
                now, before = time.monotonic(), held
                held = await sink.add_records(recording.id, [])  # adds nothing: how many
                if held != before and held < count and now - shown >= PROGRESS:
                    shown = now
                    left = max(deadline - now, 0)
                    typer.echo(
                        f"recording {route}: {held}/{count} pairs ({left:.0f}s left)", err=True
                    )
            lines = await sink.records(recording.id)
            if lines:
                write_corpus(out, route, lines)
            return len(lines)
        finally:
            await sink.disarm(recording.id)
    finally:
        await sink.close()


def record_command(
    route: Annotated[str, typer.Argument(help="The route whose traffic is recorded.")],
    count: Annotated[
        int, typer.Option("--count", min=1, max=MAX_COUNT, help="How many pairs to keep.")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="The corpus file (default: ROUTE-corpus.jsonl).")
    ] = None,
    methods: Annotated[str, typer.Option(help="Methods recorded, comma-separated.")] = "GET,HEAD",
    timeout: Annotated[str, typer.Option(help="Stop waiting after this long.")] = "60s",
    store: Store = "file",
    prefix: Prefix = DEFAULT_PREFIX,
    state_dir: StateDir = Path("var"),
) -> None:
    """Record COUNT real request/answer pairs of ROUTE from the running proxies, without
    credentials or secret fields, as a corpus for `strangler contract run`."""
    import asyncio

    from proxy.shadow.sink import SinkError
    from proxy.table.fields import NAME

    if not NAME.match(route):
        _fail("record", f"{route!r} is not a route name", 2)
    chosen = _methods(methods)
    seconds = _seconds("record", "--timeout", timeout)
    path = out or Path(f"{route}-corpus.jsonl")
    try:
        recorded = asyncio.run(
            _record(route, count, chosen, seconds, path, (store, prefix, state_dir))
        )
    except KeyboardInterrupt:
        _fail("record", f"stopped; the recording of {route} was disarmed, nothing written", 130)
    except SinkError as exc:
        _fail("record", str(exc))
    except OSError as exc:
        _fail("record", f"cannot write {path}: {exc.strerror or exc}")
    if recorded == 0:
        if store == "file":
            where = f"--store file --state-dir {state_dir}"
        else:
            from proxy.store.redis import describe

            where = f"--store {describe(store)} --prefix {prefix}"
        _fail(
            "record",
            f"recorded nothing of {route} in {timeout}: is the proxy running with the same "
            f"{where}, and is {', '.join(chosen)} traffic reaching the route {route}?",
        )
    typer.echo(f"recorded {recorded} pair{'s' * (recorded != 1)} of {route} to {path}")
    if recorded < count:
        typer.echo(f"  ({count} asked; the timeout of {timeout} came first)")


# --- strangler contract run -----------------------------------------------------------------
def _header(value: str) -> tuple[str, str]:
    name, sep, content = value.partition(":")
    if not sep or not _TOKEN.match(name.strip()) or not content.strip().isprintable():
        _fail("contract", f"--header wants 'Name: value', not {value!r}", 2)
    try:
        content.encode("latin-1")
    except UnicodeEncodeError:
        _fail("contract", f"--header {name.strip()}: a header value is latin-1 text", 2)
    return name.strip(), content.strip()


def _verdict(result: dict[str, Any], threshold: float) -> str:
    unanswered = f", {result['unreachable']} unanswered" if result["unreachable"] else ""
    return (
        f"contract: {result['replayed']} replayed, {result['differ_rate'] * 100:.1f} % differ "
        f"(threshold {threshold:.1f} %){unanswered}: {'passed' if result['passed'] else 'failed'}"
    )


@contract_app.command("run")
def contract_run(
    corpus: Annotated[Path, typer.Argument(help="A corpus from `strangler record`.")],
    against: Annotated[
        str, typer.Option("--against", help="The service's base URL (put before each target).")
    ],
    header: Annotated[
        list[str] | None,
        typer.Option("--header", help="'Name: value' sent instead of the recorded (repeat)."),
    ] = None,
    threshold: Annotated[
        float, typer.Option(min=0.0, max=100.0, help="Percent of requests that may differ.")
    ] = 0.0,
    json_output: JsonFlag = False,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Requests at once.")] = 4,
    timeout: Annotated[str, typer.Option(help="Each request's timeout.")] = "10s",
    ignore: Annotated[
        list[str] | None, typer.Option("--ignore", help="JSON path not compared (repeat).")
    ] = None,
    unordered: Annotated[
        list[str] | None,
        typer.Option("--unordered", help="JSON path of an array compared without order."),
    ] = None,
    tolerance: Annotated[float, typer.Option(min=0.0, help="Numbers this close are equal.")] = 0.0,
    compare_header: Annotated[
        list[str] | None, typer.Option("--compare-header", help="Header compared (repeat).")
    ] = None,
) -> None:
    """Replay CORPUS against a service and compare each answer with the recorded one: exit 0
    when at most --threshold percent differ, 1 when more do."""
    import asyncio

    from proxy.shadow.compare import Rules
    from proxy.shadow.contract import run_contract
    from proxy.shadow.recording import CorpusError, read_corpus

    if not re.match(r"^https?://[^/]", against):
        _fail("contract", f"--against wants an http:// or https:// URL, not {against!r}", 2)
    extra = [_header(value) for value in header or ()]
    seconds = _seconds("contract", "--timeout", timeout)
    try:
        rules = Rules(
            headers=tuple(compare_header or ()),
            ignore=tuple(ignore or ()),
            unordered=tuple(unordered or ()),
            tolerance=tolerance,
        )
    except ValueError as exc:
        _fail("contract", str(exc), 2)
    try:
        head, entries = read_corpus(corpus)
    except CorpusError as exc:
        _fail("contract", str(exc), 2)
    if not entries:
        _fail("contract", f"{corpus} has no recorded pairs to replay", 2)
    result = asyncio.run(
        run_contract(
            entries,
            against,
            rules=rules,
            extra_headers=extra,
            concurrency=concurrency,
            timeout=seconds,
            route=str(head["route"]),
        )
    )
    result["threshold"] = threshold
    result["passed"] = result["differing"] * 100 <= threshold * result["replayed"]
    if json_output:
        typer.echo(json.dumps(result))
    else:
        from proxy.shadow.report import render

        typer.echo(render([result]))
        typer.echo(_verdict(result, threshold))
    if not result["passed"]:
        raise typer.Exit(1)
