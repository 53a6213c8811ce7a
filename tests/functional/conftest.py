"""Fixtures shared by the proxy's functional tests: two recorder upstreams and a proxy in front
of them ('/other' goes to the second). Modules that need other settings define their own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.functional.proxy_support import ProxyProcess, Recorder, Table, recorder, running


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[Recorder, Recorder]]:
    with recorder() as main, recorder() as other:
        yield main, other


@pytest.fixture(scope="module")
def proxy(
    upstreams: tuple[Recorder, Recorder], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    main, other = upstreams
    table = Table(
        tmp_path_factory.mktemp("proxy") / "routes.yaml",
        {"main": main.url, "other": other.url},
        [{"name": "other", "match": {"path": "/other"}, "to": "other"}],
    )
    with running(["--routes", str(table.write())]) as proxy:
        yield proxy


@pytest.fixture
def upstream(upstreams: tuple[Recorder, Recorder]) -> Recorder:
    """The main upstream, both recorders reset to their default answer."""
    for each in upstreams:
        each.reset()
    return upstreams[0]
