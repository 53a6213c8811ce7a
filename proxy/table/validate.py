"""Whole-table checks that one field alone cannot make (pure). Every problem is reported, each
with the path of the field it is about, so the loader can add the YAML line (Envoy NACKs and
YARP's validators report all errors too; a table with any problem is refused whole).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from proxy.table.model import STATIC_EXCLUDES, Match, Route, RouteTable

Loc = tuple[str | int, ...]

# Cloud metadata endpoints: never an upstream (credential theft by SSRF). The IPv4 link-local
# range (169.254.0.0/16) already covers AWS, GCP and Azure's 169.254.169.254.
METADATA_HOSTS = frozenset(
    {"metadata.google.internal", "metadata", "instance-data", "instance-data.ec2.internal"}
)
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("100.100.100.200"), ipaddress.ip_address("fd00:ec2::254")}
)


@dataclass(frozen=True)
class Problem:
    """One reason a table is refused: where (field path, YAML line once known) and why."""

    loc: Loc
    message: str
    line: int | None = None

    def where(self) -> str:
        parts = []
        for part in self.loc:
            parts.append(f"[{part}]" if isinstance(part, int) else f".{part}")
        return "".join(parts).lstrip(".")

    def __str__(self) -> str:
        where = self.where()
        return f"{where}: {self.message}" if where else self.message


def _as_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a resolver would use for `host`, including the legacy IPv4 spellings
    inet_aton accepts ("2852039166", "169.254.43518"), or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(part.isdigit() or part.startswith("0x") for part in host.split(".")):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def check_upstream_url(url: str) -> str | None:
    """Why `url` cannot be an upstream, or None when it can."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"{url!r} is not a URL: {exc}"
    if parts.scheme not in {"http", "https"}:
        return f"{url!r}: only http:// and https:// upstreams are supported"
    if not parts.hostname:
        return f"{url!r} names no host"
    if parts.username is not None or parts.password is not None:
        return f"{url!r}: credentials do not belong in an upstream URL"
    if parts.path not in {"", "/"} or parts.query or parts.fragment:
        return f"{url!r}: an upstream URL has no path, query or fragment (the request's are kept)"
    if port == 0:
        return f"{url!r}: port 0 is not a port"
    host = parts.hostname.lower().rstrip(".")  # "metadata.google.internal." is the same name
    if host in METADATA_HOSTS:
        return f"{url!r}: cloud metadata endpoints are never upstreams"
    address = _as_address(host)
    if address is None:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_link_local or address in METADATA_ADDRESSES:
        return f"{url!r}: link-local and metadata addresses are never upstreams"
    if address.is_unspecified or address.is_multicast:
        return f"{url!r}: {address} cannot be connected to"
    return None


def methods_taken(methods: tuple[str, ...]) -> frozenset[str]:
    """The methods a route (or a fallback) takes: GET implies HEAD (nginx's limit_except GET
    does the same). The matcher and the overlap check both use this."""
    return frozenset({*methods, "HEAD"} if "GET" in methods else methods)


def _without_port(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.split(":", 1)[0]


def covers(first: Match, second: Match) -> bool:
    """True when every request `second` matches is also matched by `first`."""
    if first.path != second.path or first.exact != second.exact:
        return False
    if first.methods is not None and (
        second.methods is None or not methods_taken(second.methods) <= methods_taken(first.methods)
    ):
        return False
    if first.host is not None and (
        second.host is None or first.host not in {second.host, _without_port(second.host)}
    ):
        return False
    if first.headers:
        theirs = second.headers or {}
        if any(theirs.get(name) != value for name, value in first.headers.items()):
            return False
    return True


def check_gate_url(url: str) -> str | None:
    """Why `url` cannot be a gate (an http(s) URL the control plane GETs), or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"{url!r} is not a URL: {exc}"
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return f"{url!r}: a gate is an http:// or https:// URL"
    if port == 0:
        return f"{url!r}: port 0 is not a port"
    if parts.username or parts.password:
        return f"{url!r}: credentials do not belong in a gate URL"
    # The same address rules as upstreams (no metadata or link-local hosts): the control plane
    # fetches this URL and shows what it answers.
    why = check_upstream_url(f"{parts.scheme}://{parts.netloc}")
    return None if why is None else why.replace("upstream", "gate")


def specificity(route: Route) -> tuple[int, int, int]:
    """Rank among routes on the same path: exact first, then the more conditions the better."""
    m = route.match
    return (
        int(m.exact),
        int(m.host is not None) + int(m.methods is not None) + len(m.headers or {}),
        -len(m.methods or ()),
    )


def validate(table: RouteTable, positions: list[int] | None = None) -> list[Problem]:
    """Every cross-field problem of `table`; an empty list means it can be served.

    `positions` maps each route to its index in the file, when `table` holds only some of the
    file's routes (the loader's second pass over a file with field errors)."""
    at = positions or list(range(len(table.routes)))
    problems: list[Problem] = []
    names = set(table.upstreams)
    for name, upstream in table.upstreams.items():
        if (why := check_upstream_url(upstream.url)) is not None:
            problems.append(Problem(("upstreams", name, "url"), why))
        if upstream.gate is not None and (why := check_gate_url(upstream.gate)) is not None:
            problems.append(Problem(("upstreams", name, "gate"), why))
    if table.default not in names:
        problems.append(Problem(("default",), f"unknown upstream {table.default!r}"))
    seen: dict[str, int] = {}
    for position, route in enumerate(table.routes):
        index = at[position]
        if route.name in seen:
            problems.append(
                Problem(
                    ("routes", index, "name"),
                    f"route name {route.name!r} is also used by routes[{seen[route.name]}]",
                )
            )
        seen.setdefault(route.name, index)
        if route.static is not None:
            for field in STATIC_EXCLUDES:
                if getattr(route, field) is not None:
                    problems.append(
                        Problem(
                            ("routes", index, field),
                            f"a static route serves files itself: it takes no `{field}`",
                        )
                    )
        if route.to is not None and route.to not in names:
            problems.append(Problem(("routes", index, "to"), f"unknown upstream {route.to!r}"))
        for target in route.split or {}:
            if target not in names:
                problems.append(
                    Problem(("routes", index, "split", target), f"unknown upstream {target!r}")
                )
        for loc, target in _named_upstreams(route):
            if target not in names:
                problems.append(Problem(("routes", index, *loc), f"unknown upstream {target!r}"))
        if route.fallback is not None and route.fallback.to not in names:
            problems.append(
                Problem(
                    ("routes", index, "fallback", "to"),
                    f"unknown upstream {route.fallback.to!r}",
                )
            )
        problems.extend(_rollout_problems(route, index, names))
    problems.extend(_overlaps(table.routes, at))
    return problems


def _rollout_problems(route: Route, index: int, names: set[str]) -> list[Problem]:
    """A `rollout:` block names a known upstream, on a route that has upstreams."""
    if route.rollout is None:
        return []
    if route.static is not None:
        return [
            Problem(
                ("routes", index, "rollout"),
                "a static route serves files itself: it takes no `rollout`",
            )
        ]
    target = route.rollout.to
    if target is not None and target not in names:
        return [Problem(("routes", index, "rollout", "to"), f"unknown upstream {target!r}")]
    return []


def _named_upstreams(route: Route) -> list[tuple[Loc, str]]:
    """The upstreams a route's shadow and override name, with where they are named."""
    named: list[tuple[Loc, str]] = []
    if route.shadow is not None:
        named.append((("shadow", "to"), route.shadow.to))
    if route.override is not None:
        for side in ("always", "never"):
            if (target := getattr(route.override, side)) is not None:
                named.append((("override", side), target))
    return named


def override_always(route: Route, default: str) -> str | None:
    """The arm an override's `always` forces: the one named, else the route's only upstream
    other than the table's default, else its shadow's (the service being prepared); None when
    there is none (a route rolled back to the monolith: `always` then changes nothing, and the
    rollback is never refused for it)."""
    assert route.override is not None
    if route.override.always is not None:
        return route.override.always
    others = [name for name in route.upstream_names() if name != default]
    if len(others) == 1:
        return others[0]
    if not others and route.shadow is not None and route.shadow.to != default:
        return route.shadow.to
    return None


def _overlaps(routes: tuple[Route, ...], at: list[int]) -> list[Problem]:
    """Routes that can never match, because an earlier-ranked one takes all their requests."""
    problems = []
    by_path: dict[tuple[str, bool], list[int]] = {}
    for index, route in enumerate(routes):
        by_path.setdefault((route.match.path, route.match.exact), []).append(index)
    for indexes in by_path.values():
        # Same ranking as the compiled matcher: most specific first, then file order.
        ranked = sorted(indexes, key=lambda i: (specificity(routes[i]), -i), reverse=True)
        for position, later in enumerate(ranked):
            for earlier in ranked[:position]:
                if covers(routes[earlier].match, routes[later].match):
                    what = (
                        "duplicates"
                        if routes[earlier].match == routes[later].match
                        else "is shadowed by"
                    )
                    problems.append(
                        Problem(
                            ("routes", at[later], "match"),
                            f"route {routes[later].name!r} {what} route "
                            f"{routes[earlier].name!r} (routes[{at[earlier]}]) and never matches",
                        )
                    )
                    break
    return problems
