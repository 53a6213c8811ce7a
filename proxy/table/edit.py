"""Edits of routes.yaml text that keep everything else as written: comments, order, flow style
(ruamel.yaml round trip). The control plane edits text, never a re-rendered model, so an
engineer's notes in routes.yaml survive a flip or a rollback."""

from __future__ import annotations

import io
import re
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from proxy.table.loader import TableInvalid, load_text, parse_yaml
from proxy.table.model import RouteTable


def _dump(document: Any) -> str:
    yaml = YAML(typ="rt")
    yaml.width = 100
    yaml.indent(mapping=2, sequence=4, offset=2)  # "  - name: ..." as routes.yaml is written
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue()


# A top-level `version: N` line (what every stored version has): replaced in place, which keeps
# a large table's commit from paying for a YAML round trip. Anything else goes through ruamel.
_VERSION_LINE = re.compile(r"^(version:[ \t]*)(\d+)(?=[ \t]*(?:#|$))", re.MULTILINE)


def stated_version(text: str) -> int | None:
    """The number on a table text's top-level `version:` line, if it has exactly one."""
    found = list(_VERSION_LINE.finditer(text))
    return int(found[0].group(2)) if len(found) == 1 else None


def stamp_and_load(text: str, version: int, source: str) -> tuple[str, RouteTable]:
    """`text` stamped as `version`, and its table; TableInvalid names the lines its author
    wrote (stamping adds a line to a text without `version:`)."""
    stamped = set_version(text, version, source)
    try:
        return stamped, load_text(stamped, source)
    except TableInvalid:
        load_text(text, source)
        raise


def set_version(text: str, version: int, source: str = "routes.yaml") -> str:
    found = list(_VERSION_LINE.finditer(text))
    if len(found) == 1:
        match = found[0]
        return f"{text[: match.start()]}{match.group(1)}{version}{text[match.end() :]}"
    document = parse_yaml(text, source)
    if "version" in document:
        document["version"] = version
    else:
        document.insert(0, "version", version)
    return _dump(document)


def flip(
    text: str,
    route: str,
    *,
    to: str | None = None,
    split: dict[str, int] | None = None,
    sticky: str | None = None,
    source: str = "routes.yaml",
) -> str:
    """`route` sent to one upstream (`to`) or a split instead of what it had; its `sticky` is
    kept (a route flipped back and forth keeps its users' arms), or replaced by `sticky`.
    KeyError when the table has no such route; the result still has to be validated by the
    caller."""
    if (to is None) == (split is None):
        raise ValueError("flip to one upstream or to a split")
    document = parse_yaml(text, source)
    routes = document.get("routes") or []
    entry = next(
        (r for r in routes if isinstance(r, CommentedMap) and r.get("name") == route), None
    )
    if entry is None:
        raise KeyError(route)
    position = next((i for i, key in enumerate(entry) if key in {"to", "split"}), len(entry))
    for key in ("to", "split"):
        if key in entry:
            del entry[key]
    if to is not None:
        entry.insert(min(position, len(entry)), "to", to)
    else:
        weights = CommentedMap(split)
        weights.fa.set_flow_style()
        entry.insert(min(position, len(entry)), "split", weights)
    if sticky is not None:
        if "sticky" in entry:
            entry["sticky"] = sticky
        else:
            entry.insert(min(position + 1, len(entry)), "sticky", sticky)
    return _dump(document)
