"""What changed between two route tables, per route and per upstream (pure).

Routes are compared by name: added, removed, or changed with the fields that differ (old and new
values, as they would be written in routes.yaml). Upstreams and `default` the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # instances only: `strangler routes … --admin` prints changes without the model
    from proxy.table.model import RouteTable


@dataclass(frozen=True)
class Change:
    kind: str  # "route" | "upstream" | "table"
    name: str
    action: str  # "added" | "removed" | "changed"
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def describe(self) -> str:
        head = f"{self.action} {self.kind} {self.name}"
        if self.action != "changed":
            return head
        parts = [f"{key}: {_show(old)} → {_show(new)}" for key, (old, new) in self.fields.items()]
        return head + ": " + "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "action": self.action,
            "fields": {key: {"old": old, "new": new} for key, (old, new) in self.fields.items()},
        }


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def _fields(
    old: dict[str, Any], new: dict[str, Any], prefix: str = ""
) -> dict[str, tuple[Any, Any]]:
    changed: dict[str, tuple[Any, Any]] = {}
    for key in sorted(old.keys() | new.keys()):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if isinstance(before, dict) and isinstance(after, dict) and key != "split":
            changed.update(_fields(before, after, f"{prefix}{key}."))
        else:
            changed[f"{prefix}{key}"] = (before, after)
    return changed


def diff_tables(old: RouteTable, new: RouteTable) -> list[Change]:
    """Every difference from `old` to `new`, routes first in the new table's order."""
    changes: list[Change] = []
    old_routes = {r.name: r.model_dump(exclude_defaults=True) for r in old.routes}
    new_routes = {r.name: r.model_dump(exclude_defaults=True) for r in new.routes}
    for name, spec in new_routes.items():
        if name not in old_routes:
            changes.append(Change("route", name, "added", {}))
        elif fields := _fields(old_routes[name], spec):
            changes.append(Change("route", name, "changed", fields))
    for name in old_routes:
        if name not in new_routes:
            changes.append(Change("route", name, "removed", {}))
    old_up = {n: u.model_dump(exclude_defaults=True) for n, u in old.upstreams.items()}
    new_up = {n: u.model_dump(exclude_defaults=True) for n, u in new.upstreams.items()}
    for name, spec in new_up.items():
        if name not in old_up:
            changes.append(Change("upstream", name, "added", {}))
        elif fields := _fields(old_up[name], spec):
            changes.append(Change("upstream", name, "changed", fields))
    for name in old_up:
        if name not in new_up:
            changes.append(Change("upstream", name, "removed", {}))
    table_fields = _fields(
        {"default": old.default, "max_body": old.max_body},
        {"default": new.default, "max_body": new.max_body},
    )
    if table_fields:
        changes.append(Change("table", "-", "changed", table_fields))
    return changes
