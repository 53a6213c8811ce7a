"""The `strangler` command line: one entry point for the data plane, the control plane and the
demo. Each command says what it did in plain words; failures exit non-zero with the reason.

`strangler` is `main` here, and this module imports nothing of its own: a rollback is typed in a
hurry. `strangler --version` answers before anything is loaded; every other command builds the
command tree (proxy/commands.py, also `proxy.cli.app`), whose commands import what they run only
when they run. tests/proxy/test_cli_imports.py keeps it so.
"""

from __future__ import annotations

import os
import sys

from proxy import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing for --version
if TYPE_CHECKING:
    from typing import Any

    from proxy.commands import app

__all__ = ["app", "main"]

# `strangler routes rollback VERSION --reason WHY --admin URL`: its plain form calls the command
# without typer's parser, whose coercion of each parameter through pydantic (typer 0.29) costs
# more than the rollback's own request. Anything else (--help, another option, a value that
# looks like an option, an option given twice, no admin API) goes through typer as before.
_ROLLBACK_VALUES = {"--reason": "reason", "--admin": "admin", "--author": "author"}
_ROLLBACK_FLAGS = {"--force": "force", "--json": "json_output"}


def quick_rollback(argv: list[str]) -> dict[str, Any] | None:
    """The arguments of `routes_rollback` for a remote rollback in its plain form (each option
    once, `--opt value` or `--opt=value`; STRANGLER_ADMIN and STRANGLER_AUTHOR as typer reads
    them), else None: typer parses it."""
    if argv[:2] != ["routes", "rollback"]:
        return None
    given: dict[str, Any] = {}
    rest = argv[2:]
    while rest:
        token = rest.pop(0)
        name, equals, value = token.partition("=")
        if name in _ROLLBACK_VALUES:
            if not equals:
                if not rest:
                    return None
                value = rest.pop(0)
            if value.startswith("-"):
                return None
            key: str = _ROLLBACK_VALUES[name]
            parsed: object = value
        elif token in _ROLLBACK_FLAGS:
            key, parsed = _ROLLBACK_FLAGS[token], True
        elif token.isascii() and token.isdigit() and len(token) <= 18:
            key, parsed = "version", int(token)
        else:
            return None
        if key in given:
            return None
        given[key] = parsed
    if "version" not in given or "reason" not in given:
        return None
    # click: a given option wins over its variable; an empty variable is no value
    given.setdefault("admin", os.environ.get("STRANGLER_ADMIN") or None)
    given.setdefault("author", os.environ.get("STRANGLER_AUTHOR") or None)
    return given if given["admin"] else None


def _run_quick_rollback(arguments: dict[str, Any]) -> int:
    """Run the command as typer's standalone mode would: its exit code."""
    import typer

    from proxy.commands import routes_rollback

    try:
        routes_rollback(**arguments)
    except typer.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the output's reader went away: say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.dup2(devnull, sys.stderr.fileno())
        return 1
    return 0


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        # What the root's eager --version option prints (and exit 0), without typer.
        print(f"strangler {__version__}")
        return
    rollback = quick_rollback(sys.argv[1:])
    if rollback is not None:
        code = _run_quick_rollback(rollback)
        if code:
            raise SystemExit(code)
        return
    from proxy import commands

    commands.app()


def __getattr__(name: str) -> Any:
    """`proxy.cli.app`: the command tree, built on first use."""
    if name == "app":
        from proxy import commands

        return commands.app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
