"""routes.yaml ↔ RouteTable, with the YAML line of every problem.

A table is refused whole on the first sign of trouble, and every problem is reported: YAML
syntax, unknown or mistyped fields (pydantic), and whole-table checks (validate.py). ruamel.yaml
keeps line numbers and, for the control plane, comments on a round trip.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from proxy.table.access import JwtIssuer
from proxy.table.model import Route, RouteTable, Upstream
from proxy.table.validate import Loc, Problem, check_upstream_url, validate


class TableInvalid(Exception):
    """A table that cannot be served; `problems` holds every reason, each with its line."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(self.describe())

    def describe(self) -> str:
        """One line per problem, compiler style: `FILE:LINE: FIELD: REASON`."""
        return "\n".join(
            f"{self.source}:{p.line}: {p}" if p.line else f"{self.source}: {p}"
            for p in sorted(self.problems, key=lambda p: p.line or 0)
        )


def _line_of(document: Any, loc: Loc) -> int | None:
    """1-based line of the deepest node of `loc` that the document has."""
    node, line = document, None
    for part in loc:
        lc = getattr(node, "lc", None)
        try:
            if isinstance(node, dict) and part in node:
                if lc is not None:
                    line = lc.key(part)[0] + 1
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                if lc is not None:
                    line = lc.item(part)[0] + 1
                node = node[part]
            else:
                break
        except (KeyError, IndexError, TypeError):
            break
    return line


def _pydantic_problems(document: Any, exc: ValidationError) -> list[Problem]:
    problems = []
    for error in exc.errors():
        loc = tuple(part for part in error["loc"] if isinstance(part, str | int))
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = f"unknown field {loc[-1]!r}" if loc else "unknown field"
        elif error["type"] == "missing":
            message = f"missing field {loc[-1]!r}" if loc else "missing field"
            loc_for_line = loc[:-1]
            problems.append(Problem(loc, message, _line_of(document, loc_for_line)))
            continue
        problems.append(Problem(loc, message, _line_of(document, loc)))
    return problems


def _unique(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for problem in problems:
        key = (problem.loc, problem.message)
        if key not in seen:
            seen.add(key)
            out.append(problem)
    return out


def _unknown_references(spec: Any, index: int, names: set[str]) -> list[Problem]:
    """Upstreams an (otherwise invalid) route names but the table does not declare."""
    if not isinstance(spec, dict):
        return []
    found = []
    if isinstance(spec.get("to"), str) and spec["to"] not in names:
        found.append(Problem(("routes", index, "to"), f"unknown upstream {spec['to']!r}"))
    if isinstance(spec.get("split"), dict):
        for upstream in spec["split"]:
            if upstream not in names:
                loc = ("routes", index, "split", str(upstream))
                found.append(Problem(loc, f"unknown upstream {upstream!r}"))
    fallback = spec.get("fallback")
    target = fallback.get("to") if isinstance(fallback, dict) else fallback
    if isinstance(target, str) and target not in names:
        loc = ("routes", index, "fallback", "to")
        found.append(Problem(loc, f"unknown upstream {target!r}"))
    return found


def _duplicate_names_of_invalid(raw_routes: Any, valid: set[int]) -> list[Problem]:
    """Duplicate route names where the later route has field errors (validate() sees only the
    routes that are valid on their own)."""
    seen: dict[str, int] = {}
    found = []
    for index, spec in enumerate(raw_routes if isinstance(raw_routes, list) else []):
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str):
            continue
        if name in seen and index not in valid:
            found.append(
                Problem(
                    ("routes", index, "name"),
                    f"route name {name!r} is also used by routes[{seen[name]}]",
                )
            )
        seen.setdefault(name, index)
    return found


def _partial_problems(document: Any) -> list[Problem]:
    """Whole-table checks over the parts that are valid on their own, so that one mistyped
    field does not hide an unknown upstream three routes further down."""
    raw_upstreams = document.get("upstreams")
    raw_routes = document.get("routes")
    upstreams: dict[str, Upstream] = {}
    if isinstance(raw_upstreams, dict):
        for name, spec in raw_upstreams.items():
            try:
                upstreams[str(name)] = Upstream.model_validate(spec)
            except ValidationError:
                upstreams[str(name)] = Upstream.model_construct(url="http://invalid")
    routes, positions = [], []
    early: list[Problem] = []
    for index, spec in enumerate(raw_routes if isinstance(raw_routes, list) else []):
        try:
            routes.append(Route.model_validate(spec))
            positions.append(index)
        except ValidationError:
            problems_here = _unknown_references(spec, index, set(upstreams))
            early.extend(
                Problem(p.loc, p.message, _line_of(document, p.loc)) for p in problems_here
            )
    default = document.get("default")
    partial = RouteTable.model_construct(
        version=0,
        upstreams=upstreams,
        default=default if isinstance(default, str) else next(iter(upstreams), ""),
        routes=tuple(routes),
    )
    problems = early + [
        Problem(p.loc, p.message, _line_of(document, p.loc))
        for p in _duplicate_names_of_invalid(raw_routes, set(positions))
    ]
    for problem in validate(partial, positions):
        if problem.loc[:1] == ("upstreams",) and problem.loc[-1] == "url":
            continue  # an invalid spec is reported by the field pass; a valid one is rechecked
        problems.append(Problem(problem.loc, problem.message, _line_of(document, problem.loc)))
    for name, spec in upstreams.items():
        if spec.url != "http://invalid" and (why := check_upstream_url(spec.url)) is not None:
            loc = ("upstreams", name, "url")
            problems.append(Problem(loc, why, _line_of(document, loc)))
    return problems


def parse_yaml(text: str, source: str) -> Any:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True  # edits (table/edit.py) write strings back as they were quoted
    try:
        document = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        reason = " ".join(str(p) for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise TableInvalid(source, [Problem((), f"YAML: {reason}", line)]) from None
    except YAMLError as exc:
        raise TableInvalid(source, [Problem((), f"YAML: {exc}")]) from None
    if not isinstance(document, dict):
        raise TableInvalid(source, [Problem((), "the table is a YAML mapping", 1)])
    return document


def _static_roots(table: RouteTable, base: Path) -> tuple[RouteTable, list[Problem]]:
    """The table with every static route's root made absolute (relative roots are relative to
    `base`, the routes file's directory), and a problem for each root that is not a directory:
    a missing root is refused at load, not discovered by the first request (nginx only finds
    it then)."""
    problems, routes, changed = [], list(table.routes), False
    for index, route in enumerate(table.routes):
        if route.static is None:
            continue
        root = Path(os.path.realpath(base / route.static.root))
        if not root.is_dir():
            problems.append(
                Problem(
                    ("routes", index, "static", "root"),
                    f"{route.static.root!r} is not a directory ({root})",
                )
            )
            continue
        if str(root) != route.static.root:
            static = route.static.model_copy(update={"root": str(root)})
            routes[index] = route.model_copy(update={"static": static})
            changed = True
    return (table.model_copy(update={"routes": tuple(routes)}) if changed else table), problems


def _key_problem(issuer: JwtIssuer, field: str, path: Path) -> str | None:
    """Why an issuer's key or secret file gives no usable key (a private key, a short secret,
    not a key at all), or None."""
    if not path.is_file() or not os.access(path, os.R_OK):
        return f"{getattr(issuer, field)!r} is not a readable file ({path})"
    from proxy.access.gate import issuer_specs  # only tables with issuers pay for the import

    spec = issuer_specs((issuer.model_copy(update={field: str(path)}),))[0]
    from proxy.access.jwt import key_file_problem

    return key_file_problem(spec)


def _key_files(table: RouteTable, base: Path) -> tuple[RouteTable, list[Problem]]:
    """The table with every JWT issuer's key or secret file made absolute (relative to `base`,
    as static roots are), and a problem for each one that cannot be read: a token refused for
    a missing key file is found at load, not by the first partner's request."""
    problems, issuers, changed = [], list(table.credentials.jwt), False
    for index, issuer in enumerate(table.credentials.jwt):
        for field in ("key_file", "secret_file"):
            name = getattr(issuer, field)
            if name is None:
                continue
            path = Path(os.path.realpath(base / name))
            why = _key_problem(issuer, field, path)
            if why is not None:
                problems.append(Problem(("credentials", "jwt", index, field), why))
            elif str(path) != name:
                issuers[index] = issuer.model_copy(update={field: str(path)})
                changed = True
    if not changed:
        return table, problems
    credentials = table.credentials.model_copy(update={"jwt": tuple(issuers)})
    return table.model_copy(update={"credentials": credentials}), problems


def load_text(text: str, source: str = "routes.yaml", base: Path | None = None) -> RouteTable:
    """Parse and check a table; raise TableInvalid listing every problem with its line.
    `base` is the directory relative static roots are found in (default: the working
    directory)."""
    document = parse_yaml(text, source)
    try:
        table = RouteTable.model_validate(document)
    except ValidationError as exc:
        problems = _pydantic_problems(document, exc) + _partial_problems(document)
        raise TableInvalid(source, _unique(problems)) from None
    table, roots = _static_roots(table, base or Path.cwd())
    table, keys = _key_files(table, base or Path.cwd())
    problems = [
        Problem(p.loc, p.message, _line_of(document, p.loc))
        for p in [*validate(table), *roots, *keys]
    ]
    if problems:
        raise TableInvalid(source, problems)
    return table


def load_file(path: str | Path) -> RouteTable:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TableInvalid(
            str(path), [Problem((), f"cannot read: {exc.strerror or exc}")]
        ) from None
    except UnicodeDecodeError:
        raise TableInvalid(str(path), [Problem((), "not UTF-8 text")]) from None
    return load_text(text, str(path), path.parent)


def single_upstream(url: str) -> RouteTable:
    """The table of a proxy with no routes file: everything to one upstream."""
    return load_text(f"upstreams:\n  default: {{url: {url!r}}}\ndefault: default\n", "--upstream")
