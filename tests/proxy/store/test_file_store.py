"""The file store: versions, history, optimistic concurrency, atomic files, hand edits."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from proxy.store.base import UnknownVersion, VersionConflict
from proxy.store.file import FileStore
from proxy.table.edit import flip
from proxy.table.loader import TableInvalid

TABLE = """\
# served by strangler
version: 7
upstreams:
  monolith: {url: "http://127.0.0.1:8001"}
  payment: {url: "http://127.0.0.1:8002"}
default: monolith
routes:
  - name: payments
    match: {path: /api/v1/payments}
    to: monolith
"""


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    (tmp_path / "routes.yaml").write_text(TABLE)
    return FileStore(tmp_path / "routes.yaml")


def test_the_existing_file_becomes_the_first_version(store: FileStore) -> None:
    current = store.current()
    assert current.info.version == 7
    assert current.text == TABLE
    assert [i.version for i in store.history()] == [7]
    assert (store.dir / "v000007.yaml").read_text() == TABLE


def test_a_commit_is_a_new_version_served_from_routes_yaml(store: FileStore) -> None:
    text = flip(TABLE, "payments", to="payment")
    committed = store.commit(text, author="ana", reason="cut over", expected_version=7)
    assert committed.info.version == 8
    assert (committed.info.author, committed.info.reason) == ("ana", "cut over")
    assert committed.table.routes[0].to == "payment"
    assert store.routes.read_text() == committed.text
    assert "version: 8" in committed.text
    assert "# served by strangler" in committed.text
    assert store.get(7).text == TABLE  # earlier versions are never rewritten
    assert [i.version for i in store.history()] == [8, 7]


def test_a_stale_commit_is_a_conflict_and_changes_nothing(store: FileStore) -> None:
    store.commit(TABLE, author="a", reason="first", expected_version=7)
    with pytest.raises(VersionConflict) as conflict:
        store.commit(TABLE, author="b", reason="second", expected_version=7)
    assert (conflict.value.expected, conflict.value.current) == (7, 8)
    assert store.current().info.version == 8


def test_an_invalid_table_is_refused_and_the_served_file_stays(store: FileStore) -> None:
    broken = TABLE.replace("to: monolith", "to: nowhere")
    with pytest.raises(TableInvalid):
        store.commit(broken, author="a", reason="oops", expected_version=7)
    assert store.routes.read_text() == TABLE
    assert [i.version for i in store.history()] == [7]


def test_a_hand_edit_is_recorded_as_a_version_of_its_own(store: FileStore) -> None:
    store.current()
    store.routes.write_text(TABLE.replace("to: monolith", "to: payment"))
    current = store.current()
    assert current.info.version == 8
    assert current.info.author == "file"
    assert "edited by hand" in current.info.reason
    assert "version: 8" in store.routes.read_text()


def test_an_invalid_hand_edit_is_not_recorded(store: FileStore) -> None:
    store.current()
    store.routes.write_text("upstreams: {")
    assert store.current().info.version == 7


def test_the_served_file_is_a_version_before_anything_recorded_it(store: FileStore) -> None:
    """`routes rollback 7` (or `routes get 7`) on a routes.yaml no command has read yet."""
    assert store.get(7).text == TABLE
    store.routes.write_text(TABLE.replace("to: monolith", "to: payment"))  # by hand
    assert store.get(8).table.routes[0].to == "payment"


def test_unknown_versions(store: FileStore) -> None:
    with pytest.raises(UnknownVersion):
        store.get(99)


def test_a_torn_log_line_from_a_crash_is_ignored(store: FileStore) -> None:
    store.current()
    with open(store.log, "a") as log:
        log.write('{"version": 8, "auth')
    assert store.current().info.version == 7


def _commit_in_process(routes: str, name: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = FileStore(Path(routes))
    try:
        version = store.commit(TABLE, author=name, reason=name, expected_version=7)
        results.put(("won", name, version.info.version))
    except VersionConflict:
        results.put(("conflict", name, 0))


def test_of_concurrent_commits_on_one_version_exactly_one_wins(store: FileStore) -> None:
    store.current()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [
        context.Process(target=_commit_in_process, args=(str(store.routes), f"w{i}", results))
        for i in range(6)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    outcomes = [results.get(timeout=10) for _ in workers]
    assert sorted(o[0] for o in outcomes) == ["conflict"] * 5 + ["won"]
    assert [i.version for i in store.history()] == [8, 7]
