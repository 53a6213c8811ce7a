"""An internal service identified by its client certificate (mTLS, as Istio's service identities):
the real proxy requires certificates on its internal listener, maps the verified subject to a
consumer, and the upstream is told who called; a service with a certificate but no consumer,
or of a group the route does not admit, is refused."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from proxy.access.consumers import Add
from proxy.store.consumers import FileConsumerStore
from tests.functional.proxy_support import Conn, ProxyProcess, Recorder, build, recorder
from tests.functional.test_proxy_tls import Certs, connect, running
from tests.support import wait_until

TABLE = """\
version: 1
upstreams:
  main: {{url: "{main}"}}
default: main
routes:
  - name: stock
    match: {{path: /internal/stock}}
    to: main
    expose: internal
    access: {{groups: [services]}}
"""


def _subject(leaf: trustme.LeafCert) -> str:
    pem = leaf.cert_chain_pems[0].bytes()
    return x509.load_pem_x509_certificate(pem).subject.rfc4514_string()


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ProxyProcess, Recorder, Certs, FileConsumerStore]]:
    folder: Path = tmp_path_factory.mktemp("mtls")
    certs = Certs(folder)
    store = FileConsumerStore(folder / "consumers.json")
    with recorder() as main:
        routes = folder / "routes.yaml"
        routes.write_text(TABLE.format(main=main.url))
        args = ["--routes", str(routes), "--consumers", str(store.path)]
        with running(args, certs.env()) as (proxy, _):
            yield proxy, main, certs, store


def _get(conn: Conn, target: str) -> tuple[int, bytes]:
    conn.sendall(build("GET", target))
    answer = conn.read_response()
    return answer.status, answer.body


def _as(proxy: ProxyProcess, context: ssl.SSLContext, target: str) -> tuple[int, bytes]:
    with connect(proxy.internal, context) as conn:
        return _get(conn, target)


def test_a_service_certificate_identifies_its_consumer_to_the_upstream(
    world: tuple[ProxyProcess, Recorder, Certs, FileConsumerStore],
) -> None:
    proxy, main, certs, store = world
    leaf = certs.ca.issue_cert("orders.internal", common_name="orders")
    store.apply(
        Add("orders", groups=("services",), subjects=(_subject(leaf),), key=False),
        author="test",
        reason="the orders service",
    )
    context = certs.client(leaf)
    wait_until(lambda: _as(proxy, context, "/internal/stock/1")[0] == 200, what="mTLS identity")
    main.reset()
    assert _as(proxy, context, "/internal/stock/2")[0] == 200
    seen = main.only()
    assert seen.values("x-consumer-id") == [b"orders"]
    assert seen.values("x-consumer-groups") == [b"services"]


def test_a_certificate_of_no_consumer_or_of_another_group_is_refused(
    world: tuple[ProxyProcess, Recorder, Certs, FileConsumerStore],
) -> None:
    proxy, main, certs, store = world
    stranger = certs.ca.issue_cert("stranger.internal", common_name="stranger")
    status, body = _as(proxy, certs.client(stranger), "/internal/stock/3")
    assert status == 401, body
    reporting = certs.ca.issue_cert("reports.internal", common_name="reports")
    store.apply(
        Add("reports", groups=("analytics",), subjects=(_subject(reporting),), key=False),
        author="test",
        reason="the reporting job",
    )
    wait_until(
        lambda: _as(proxy, certs.client(reporting), "/internal/stock/4")[0] == 403,
        what="the reporting job refused by group",
    )
    main.reset()
    assert main.seen == []
