"""TLS on the real proxy's listeners (`strangler serve` as a child process, certificates from
trustme): the external listener served to curl and httpx, client certificates required on the
internal one, a certificate replaced on disk while clients are connected, a bad replacement,
a missing key refused at start, the admin listener in plain HTTP, and two workers.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from tests.functional.proxy_support import (
    STRANGLER,
    Conn,
    ProxyProcess,
    Recorder,
    build,
    get,
    logged,
    recorder,
    wait_until,
)

INTERVAL = 0.1  # seconds between the proxy's checks of its certificate files
_LISTENERS = re.compile(r"(external|internal|admin) on (https?)://[\d.]+:(\d+)")
CURL = shutil.which("curl")


class Certs:
    """A CA, the listeners' files (replaced by rename, as operators and Kubernetes do) and the
    environment that points `strangler serve` at them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = trustme.CA()
        self.ca_file = root / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.cert, self.key = root / "cert.pem", root / "key.pem"
        self.served = self.install(self.issue())

    def issue(self) -> trustme.LeafCert:
        return self.ca.issue_cert("127.0.0.1")

    def install(self, leaf: trustme.LeafCert) -> trustme.LeafCert:
        replace(self.key, leaf.private_key_pem.bytes())
        replace(self.cert, leaf.cert_chain_pems[0].bytes())
        return leaf

    def env(self) -> dict[str, str]:
        return {
            "STRANGLER_TLS_CERT": str(self.cert),
            "STRANGLER_TLS_KEY": str(self.key),
            "STRANGLER_INTERNAL_TLS_CERT": str(self.cert),
            "STRANGLER_INTERNAL_TLS_KEY": str(self.key),
            "STRANGLER_INTERNAL_CLIENT_CA": str(self.ca_file),
            "STRANGLER_TLS_RELOAD_INTERVAL": str(INTERVAL),
        }

    def client(self, leaf: trustme.LeafCert | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if leaf is not None:
            leaf.configure_cert(context)
        return context


def replace(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".new")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def der(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def start(args: list[str], env: dict[str, str]) -> tuple[ProxyProcess, dict[str, str]]:
    """The proxy and each listener's scheme, ports read from its announce line."""
    proxy = ProxyProcess(args, env).start()
    announced = next(line for line in proxy.stderr if "strangler serving" in line)
    schemes = {}
    for role, scheme, port in _LISTENERS.findall(announced):
        proxy.ports[role], schemes[role] = int(port), scheme
    return proxy, schemes


@contextlib.contextmanager
def running(args: list[str], env: dict[str, str]) -> Iterator[tuple[ProxyProcess, dict[str, str]]]:
    proxy, schemes = start(args, env)
    try:
        yield proxy, schemes
    finally:
        proxy.stop()
    assert "Traceback" not in "".join(proxy.stderr), "".join(proxy.stderr)


@contextlib.contextmanager
def connect(port: int, context: ssl.SSLContext) -> Iterator[Conn]:
    """A TLS connection to the proxy (the handshake done), read with the raw client."""
    conn = Conn(port)
    try:
        conn.sock = context.wrap_socket(conn.sock, server_hostname="127.0.0.1")
        yield conn
    finally:
        conn.close()


def peer(conn: Conn) -> bytes | None:
    sock = conn.sock
    assert isinstance(sock, ssl.SSLSocket)
    return sock.getpeercert(binary_form=True)


def get_over(conn: Conn, target: str) -> int:
    conn.sendall(build("GET", target))
    answer = conn.read_response()
    assert answer.complete
    return answer.status


@pytest.fixture(scope="module")
def main() -> Iterator[Recorder]:
    with recorder() as upstream:
        yield upstream


@pytest.fixture
def upstream(main: Recorder) -> Recorder:
    main.reset()
    return main


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def secured(main: Recorder, certs: Certs) -> Iterator[tuple[ProxyProcess, dict[str, str]]]:
    """A proxy whose external listener serves TLS and whose internal one requires client
    certificates signed by the CA."""
    with running(["--default-upstream", main.url], certs.env()) as started:
        yield started


@pytest.fixture
def proxy(secured: tuple[ProxyProcess, dict[str, str]]) -> ProxyProcess:
    return secured[0]


# --- serving -------------------------------------------------------------------------------------
def test_tls_listeners_announce_https_and_admin_stays_plain_http(
    secured: tuple[ProxyProcess, dict[str, str]],
) -> None:
    proxy, schemes = secured
    assert schemes == {"external": "https", "internal": "https", "admin": "http"}
    assert get(proxy.admin, "/healthz").status == 200  # plain HTTP on the admin port


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_gets_through_the_external_listener(
    proxy: ProxyProcess, certs: Certs, upstream: Recorder
) -> None:
    assert CURL is not None
    done = subprocess.run(
        [
            CURL,
            *("--silent", "--show-error", "--noproxy", "*", "--max-time", "10"),
            *("--cacert", str(certs.ca_file), "--include"),
            f"https://127.0.0.1:{proxy.external}/orders/7",
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"HTTP/1.1 200"), done.stdout
    assert done.stdout.endswith(b"\r\n\r\nok")
    seen = upstream.only()
    assert seen.target == b"/orders/7"
    assert seen.value("x-forwarded-proto") == b"https"


def test_httpx_gets_through_the_external_listener(
    proxy: ProxyProcess, certs: Certs, upstream: Recorder
) -> None:
    with httpx.Client(verify=certs.client(), timeout=10) as client:
        answer = client.get(f"https://127.0.0.1:{proxy.external}/orders/8")
    assert answer.status_code == 200
    assert answer.text == "ok"
    assert upstream.only().value("x-forwarded-proto") == b"https"


def test_a_plain_http_request_to_the_tls_listener_gets_no_answer(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    with Conn(proxy.external) as conn:
        conn.sendall(build("GET", "/orders/9"))
        with contextlib.suppress(ConnectionResetError):
            assert not conn.read_until_closed().startswith(b"HTTP/")
    assert upstream.seen == []


# --- client certificates on the internal listener ---------------------------------------------
def refused(port: int, context: ssl.SSLContext) -> None:
    """The handshake fails, or (TLS 1.3: the client's part ends before the server checked the
    certificate) the connection fails before any answer."""

    def request() -> None:
        with connect(port, context) as conn:
            conn.sendall(build("GET", "/internal/orders"))
            conn.read_response()

    with pytest.raises((ssl.SSLError, ConnectionError)):
        request()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_the_internal_listener_refuses_a_client_without_a_certificate(
    proxy: ProxyProcess, certs: Certs, upstream: Recorder, version: ssl.TLSVersion
) -> None:
    client = certs.client()
    client.maximum_version = version
    if version == ssl.TLSVersion.TLSv1_2:  # the server checks before its Finished: no handshake
        with pytest.raises(ssl.SSLError), connect(proxy.internal, client):
            pass
    refused(proxy.internal, client)
    assert upstream.seen == []


def test_the_internal_listener_refuses_a_certificate_from_another_ca(
    proxy: ProxyProcess, certs: Certs, upstream: Recorder
) -> None:
    stranger = trustme.CA().issue_cert("orders", common_name="orders")
    refused(proxy.internal, certs.client(stranger))
    assert upstream.seen == []


def test_the_internal_listener_serves_a_client_certificate_of_its_ca(
    proxy: ProxyProcess, certs: Certs, upstream: Recorder
) -> None:
    caller = certs.ca.issue_cert("orders", common_name="orders")
    with connect(proxy.internal, certs.client(caller)) as conn:
        assert get_over(conn, "/internal/orders") == 200
        assert get_over(conn, "/internal/orders") == 200
    assert len(upstream.seen) == 2
    assert all(seen.value("x-forwarded-proto") == b"https" for seen in upstream.seen)


# --- reload ---------------------------------------------------------------------------------------
def test_a_replaced_certificate_reaches_new_connections_and_spares_held_ones(
    tmp_path: Path, upstream: Recorder
) -> None:
    certs = Certs(tmp_path)
    old = certs.served
    client = certs.client()
    statuses: list[int] = []
    new = certs.issue()

    def new_connection_gets_the_new_certificate(port: int) -> bool:
        with connect(port, client) as conn:
            statuses.append(get_over(conn, "/during"))
            return peer(conn) == der(new)

    with (
        running(["--default-upstream", upstream.url], certs.env()) as (proxy, _),
        connect(proxy.external, client) as held,
    ):
        assert get_over(held, "/before") == 200
        assert peer(held) == der(old)
        certs.install(new)  # the key first, then the certificate
        wait_until(
            lambda: new_connection_gets_the_new_certificate(proxy.external),
            what="the new certificate",
        )
        assert get_over(held, "/after") == 200  # the same connection, still open
        assert peer(held) == der(old)
    assert statuses
    assert set(statuses) == {200}, statuses
    assert [seen.target for seen in upstream.seen].count(b"/after") == 1


def test_a_bad_replacement_leaves_the_old_certificate_served(
    tmp_path: Path, upstream: Recorder
) -> None:
    certs = Certs(tmp_path)
    old = certs.served
    client = certs.client()
    failure = "still serving the previous certificate"
    with running(["--default-upstream", upstream.url], certs.env()) as (proxy, _):
        replace(certs.key, b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
        wait_until(lambda: logged(proxy, failure), what="the refused key logged")
        time.sleep(5 * INTERVAL)  # several more checks of the same files
        with connect(proxy.external, client) as conn:
            assert get_over(conn, "/still") == 200
            assert peer(conn) == der(old)
        lines = [line for line in proxy.stderr if failure in line]
    # Once per listener (both serve these files), not once per check.
    assert len(lines) == 2, lines
    assert all(str(certs.key) in line for line in lines)
    assert {line.split(" TLS key")[0] for line in lines} == {"the external", "the internal"}


def test_serve_refuses_a_missing_key_with_its_name(tmp_path: Path) -> None:
    certs = Certs(tmp_path)
    certs.key.unlink()
    base = {k: v for k, v in os.environ.items() if not k.startswith("STRANGLER_")}
    done = subprocess.run(
        [
            *(STRANGLER, "serve", "--default-upstream", "http://127.0.0.1:9"),
            *(
                "--listen",
                "127.0.0.1:0",
                "--internal-listen",
                "off",
                "--admin-listen",
                "127.0.0.1:0",
            ),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**base, "STRANGLER_TLS_CERT": str(certs.cert), "STRANGLER_TLS_KEY": str(certs.key)},
    )
    assert done.returncode == 2, done.stderr
    assert f"cannot read the external TLS key {certs.key}" in done.stderr
    assert "strangler serving" not in done.stderr


# --- workers --------------------------------------------------------------------------------------
def test_two_workers_serve_tls_and_reload(tmp_path: Path, upstream: Recorder) -> None:
    certs = Certs(tmp_path)
    client = certs.client()
    args = ["--default-upstream", upstream.url, "--workers", "2"]
    with running(args, certs.env()) as (proxy, schemes):
        assert schemes["external"] == "https"
        for _ in range(6):
            with connect(proxy.external, client) as conn:
                assert get_over(conn, "/worker") == 200
                assert peer(conn) == der(certs.served)
        refused(proxy.internal, client)  # each worker requires client certificates
        new = certs.install(certs.issue())

        def new_certificate() -> bool:
            with connect(proxy.external, client) as conn:
                return peer(conn) == der(new)

        wait_until(lambda: all(new_certificate() for _ in range(8)), what="every worker reloaded")
