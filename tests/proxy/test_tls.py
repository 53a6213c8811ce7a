"""TLS on the listeners (proxy/tls.py): the server context's profile, files refused with their
names, certificates reloaded in place without touching the live context with a bad pair, and
the ASGI TLS extension in the scope of a request served by the proxy's protocol.

Handshakes run in memory (ssl.MemoryBIO on both sides) or, for the scope, on a real socket of
127.0.0.1 served by the proxy's engine (H1Connection); certificates come from trustme.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import uvicorn
from uvicorn.server import ServerState

from proxy import h1server
from proxy.h1server import H1Connection
from proxy.server import bind, serve
from proxy.settings import ProxySettings
from proxy.tls import (
    ListenerTLS,
    TLSFiles,
    client_cert_name,
    connection_tls,
    load_files,
    reload_certificates,
    server_context,
    tls_files,
)
from proxy.types import Receive, Scope, Send

TIMEOUT = 10.0


# --- certificates on disk -------------------------------------------------------------------------
class PKI:
    """A CA, and the files a listener is given, replaced by rename as operators do."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = trustme.CA()
        self.ca_file = root / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.cert, self.key = root / "cert.pem", root / "key.pem"

    def leaf(self) -> trustme.LeafCert:
        return self.ca.issue_cert("localhost", "127.0.0.1")

    def install(self, leaf: trustme.LeafCert) -> trustme.LeafCert:
        replace(self.key, leaf.private_key_pem.bytes())
        replace(self.cert, leaf.cert_chain_pems[0].bytes())
        return leaf

    def files(self, client_ca: Path | None = None) -> TLSFiles:
        return TLSFiles("external", self.cert, self.key, client_ca)

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


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path)


# --- handshakes in memory -------------------------------------------------------------------------
class Accepted:
    """A connection the server side has accepted (its SSL object exists); `finish` runs the
    handshake with a client and returns the client's side."""

    def __init__(self, server: ssl.SSLContext) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.server = server.wrap_bio(self.incoming, self.outgoing, server_side=True)

    def finish(self, client: ssl.SSLContext) -> ssl.SSLObject:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        side = client.wrap_bio(incoming, outgoing, server_hostname="localhost")
        done = {"client": False, "server": False}
        for _ in range(20):
            for name, obj in (("client", side), ("server", self.server)):
                if not done[name]:
                    with contextlib.suppress(ssl.SSLWantReadError):
                        obj.do_handshake()
                        done[name] = True
                self.incoming.write(outgoing.read())
                incoming.write(self.outgoing.read())
            if all(done.values()):
                return side
        raise AssertionError("the handshake did not end")


def served(context: ssl.SSLContext, client: ssl.SSLContext) -> bytes:
    """The certificate (DER) a new connection to `context` is given."""
    peer = Accepted(context).finish(client).getpeercert(binary_form=True)
    assert peer is not None
    return peer


# --- the context --------------------------------------------------------------------------------
def test_contexts_follow_the_intermediate_profile(pki: PKI) -> None:
    pki.install(pki.leaf())
    context = server_context(pki.files())
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE  # no client certificate asked for
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_TICKET
    assert context.options & ssl.OP_NO_RENEGOTIATION  # the mTLS identity is read once
    tls12 = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12
    assert all(name.startswith(("ECDHE-", "DHE-")) for name in tls12)
    assert all("GCM" in name or "CHACHA20" in name for name in tls12)


def test_a_client_offering_h2_gets_http_1_1(pki: PKI) -> None:
    pki.install(pki.leaf())
    client = pki.client()
    client.set_alpn_protocols(["h2", "http/1.1"])
    side = Accepted(server_context(pki.files())).finish(client)
    assert side.selected_alpn_protocol() == "http/1.1"


def test_a_client_ca_makes_client_certificates_required(pki: PKI) -> None:
    leaf = pki.install(pki.leaf())
    context = server_context(pki.files(client_ca=pki.ca_file))
    assert context.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ssl.SSLError, match="CERTIFICATE"):
        Accepted(context).finish(pki.client())  # no certificate
    stranger = trustme.CA().issue_cert("orders")
    with pytest.raises(ssl.SSLError, match="CERTIFICATE"):
        Accepted(context).finish(pki.client(stranger))  # signed by another CA
    signed = pki.ca.issue_cert("orders")
    assert served(context, pki.client(signed)) == der(leaf)


def test_tls_files_per_role() -> None:
    settings = ProxySettings(
        tls_cert=Path("e.pem"),
        tls_key=Path("e.key"),
        internal_tls_cert=Path("i.pem"),
        internal_tls_key=Path("i.key"),
        internal_client_ca=Path("ca.pem"),
    )
    assert tls_files(settings) == {
        "external": TLSFiles("external", Path("e.pem"), Path("e.key")),
        "internal": TLSFiles("internal", Path("i.pem"), Path("i.key"), Path("ca.pem")),
    }
    assert tls_files(ProxySettings()) == {}


# --- files refused with their names ---------------------------------------------------------------
def test_a_missing_key_is_refused_with_its_name(pki: PKI) -> None:
    pki.install(pki.leaf())
    pki.key.unlink()
    with pytest.raises(ValueError, match=r"cannot read the external TLS key .*key\.pem"):
        server_context(pki.files())


def test_a_missing_client_ca_is_refused_with_its_name(pki: PKI) -> None:
    pki.install(pki.leaf())
    with pytest.raises(ValueError, match=r"client CA .*nowhere\.pem"):
        server_context(pki.files(client_ca=pki.root / "nowhere.pem"))


def test_a_garbage_key_is_refused_with_its_name(pki: PKI) -> None:
    pki.install(pki.leaf())
    pki.key.write_text("not a key\n")
    with pytest.raises(ValueError, match=r"TLS key .*key\.pem is not the PEM private key of"):
        server_context(pki.files())


def test_the_key_of_another_certificate_is_refused(pki: PKI) -> None:
    pki.install(pki.leaf())
    replace(pki.key, pki.leaf().private_key_pem.bytes())
    with pytest.raises(ValueError, match="key values mismatch"):
        server_context(pki.files())


def test_a_certificate_that_is_not_one_is_blamed_not_its_key(pki: PKI) -> None:
    pki.install(pki.leaf())
    pki.cert.write_text("hello\n")
    with pytest.raises(ValueError, match=r"certificate .*cert\.pem is not a PEM certificate"):
        server_context(pki.files())


def test_an_encrypted_key_is_refused_not_prompted_for(pki: PKI) -> None:
    from cryptography.hazmat.primitives import serialization

    leaf = pki.install(pki.leaf())
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    locked = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    replace(pki.key, locked)
    with pytest.raises(ValueError, match="is encrypted"):
        server_context(pki.files())


def test_serve_refuses_a_missing_key_before_binding(pki: PKI) -> None:
    pki.install(pki.leaf())
    pki.key.unlink()
    with socket.socket() as taken:  # were it bound first, this port would fail the start
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = ProxySettings(
            default_upstream="http://127.0.0.1:9",
            listen=f"127.0.0.1:{port}",
            internal_listen="off",
            admin_listen="127.0.0.1:0",
            tls_cert=pki.cert,
            tls_key=pki.key,
        )
        with pytest.raises(ValueError, match=r"external TLS key .*key\.pem"):
            serve(settings, announce=lambda line: None)


def test_a_tls_listener_announces_https() -> None:
    secured = bind("external", ("127.0.0.1", 0), tls=True)
    plain = bind("admin", ("127.0.0.1", 0))
    try:
        assert secured.url == f"https://127.0.0.1:{secured.port}"
        assert plain.url == f"http://127.0.0.1:{plain.port}"
    finally:
        secured.sock.close()
        plain.sock.close()


# --- reload -------------------------------------------------------------------------------------
def test_a_replaced_pair_is_served_to_new_connections_only(pki: PKI) -> None:
    old = pki.install(pki.leaf())
    listener = ListenerTLS(pki.files())
    client = pki.client()
    assert not listener.reload_if_changed()
    before = Accepted(listener.context)  # accepted before the reload, handshake after it
    new = pki.install(pki.leaf())
    assert listener.reload_if_changed()
    assert served(listener.context, client) == der(new)
    peer = before.finish(client).getpeercert(binary_form=True)
    assert peer == der(old)  # OpenSSL gave it the certificate of its accept
    assert not listener.reload_if_changed()


def test_a_garbage_key_leaves_the_old_certificate_and_is_logged_once(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    old = pki.install(pki.leaf())
    listener = ListenerTLS(pki.files())
    replace(pki.key, b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    with caplog.at_level(logging.ERROR, logger="strangler"):
        for _ in range(3):
            assert not listener.reload_if_changed()
    assert served(listener.context, pki.client()) == der(old)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors
    assert "key.pem" in errors[0]
    assert "still serving the previous certificate" in errors[0]


def test_the_key_of_another_certificate_never_reaches_the_live_context(pki: PKI) -> None:
    """Loaded into the live context, a mismatched pair would leave it without a usable key."""
    old = pki.install(pki.leaf())
    listener = ListenerTLS(pki.files())
    replace(pki.cert, pki.leaf().cert_chain_pems[0].bytes())
    assert not listener.reload_if_changed()
    assert served(listener.context, pki.client()) == der(old)


def test_a_rotation_seen_half_way_is_loaded_once_complete(pki: PKI) -> None:
    pki.install(pki.leaf())
    listener = ListenerTLS(pki.files())
    new = pki.leaf()
    replace(pki.key, new.private_key_pem.bytes())  # the key first, the certificate not yet
    assert not listener.reload_if_changed()
    replace(pki.cert, new.cert_chain_pems[0].bytes())
    assert listener.reload_if_changed()
    assert served(listener.context, pki.client()) == der(new)


def test_a_ca_added_to_the_client_ca_file_is_trusted(pki: PKI) -> None:
    pki.install(pki.leaf())
    listener = ListenerTLS(pki.files(client_ca=pki.ca_file))
    partner = trustme.CA()
    client = pki.client(partner.issue_cert("billing"))
    with pytest.raises(ssl.SSLError):
        Accepted(listener.context).finish(client)
    replace(pki.ca_file, pki.ca.cert_pem.bytes() + partner.cert_pem.bytes())
    assert listener.reload_if_changed()
    Accepted(listener.context).finish(client)


def test_the_reload_task_picks_up_a_new_pair(pki: PKI) -> None:
    pki.install(pki.leaf())
    listener = ListenerTLS(pki.files())
    new = pki.install(pki.leaf())

    async def scenario() -> bytes:
        task = asyncio.create_task(reload_certificates([listener], 0.01))
        try:
            async with asyncio.timeout(TIMEOUT):
                while True:
                    if served(listener.context, pki.client()) == der(new):
                        break
                    await asyncio.sleep(0.01)
        finally:
            task.cancel()
        return served(listener.context, pki.client())

    assert asyncio.run(scenario()) == der(new)


def test_load_files_adds_nothing_when_the_key_is_unreadable(pki: PKI) -> None:
    old = pki.install(pki.leaf())
    context = server_context(pki.files())
    pki.key.unlink()
    with pytest.raises(ValueError, match="cannot read"):
        load_files(context, pki.files())
    assert served(context, pki.client()) == der(old)


# --- the scope ----------------------------------------------------------------------------------
class ScopeServer:
    """The proxy's engine on 127.0.0.1:0 with a given context, in a thread of its own; the
    application records every scope and answers 200 "ok"."""

    def __init__(self, context: ssl.SSLContext | None) -> None:
        self.scopes: list[Scope] = []
        config = uvicorn.Config(
            self.app,
            http=H1Connection,
            lifespan="off",
            ws="none",
            interface="asgi3",
            access_log=False,
            log_level="warning",
        )
        config.load()
        self.state = ServerState()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        def protocol() -> asyncio.Protocol:
            return H1Connection(config=config, server_state=self.state, app_state={})

        made = self.loop.create_server(protocol, "127.0.0.1", 0, ssl=context)
        self.server = asyncio.run_coroutine_threadsafe(made, self.loop).result(TIMEOUT)
        self.port: int = self.server.sockets[0].getsockname()[1]

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        start = {"type": "http.response.start", "status": 200}
        await send({**start, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for connection in list(self.state.connections):
                connection.transport.close()
            await asyncio.sleep(0.05)
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(H1Connection, "limits", ProxySettings(), raising=False)


@contextlib.contextmanager
def scope_server(context: ssl.SSLContext | None) -> Iterator[ScopeServer]:
    server = ScopeServer(context)
    try:
        yield server
    finally:
        server.close()


def get_twice(port: int, client: ssl.SSLContext | None) -> None:
    """Two requests on one connection, each answered 200."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock: Any = raw if client is None else client.wrap_socket(raw, server_hostname="localhost")
    with sock:
        for _ in range(2):
            sock.sendall(b"GET /orders HTTP/1.1\r\nHost: proxy.test\r\n\r\n")
            answer = b""
            while not answer.endswith(b"ok"):
                chunk = sock.recv(4096)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 ")


@pytest.mark.usefixtures("limits")
def test_the_verified_client_certificate_is_in_the_scope(
    pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki.install(pki.leaf())
    made: list[object] = []
    original = connection_tls

    def counted(transport: asyncio.BaseTransport) -> Any:
        made.append(transport)
        return original(transport)

    monkeypatch.setattr(h1server, "connection_tls", counted)
    caller = pki.ca.issue_cert(
        "orders.internal",
        common_name="orders",
        organization_name="internal",
        organization_unit_name="services",
    )
    with scope_server(server_context(pki.files(client_ca=pki.ca_file))) as server:
        get_twice(server.port, pki.client(caller))
    assert len(made) == 1  # once per connection, not per request
    assert len(server.scopes) == 2
    first, second = server.scopes
    tls = first["extensions"]["tls"]
    assert second["extensions"]["tls"] == tls
    assert first["scheme"] == "https"
    assert tls["client_cert_name"] == "CN=orders,OU=services,O=internal"
    assert client_cert_name(first) == "CN=orders,OU=services,O=internal"
    assert [ssl.PEM_cert_to_DER_cert(pem) for pem in tls["client_cert_chain"]] == [der(caller)]
    assert tls["client_cert_error"] is None
    assert tls["server_cert"] is None
    assert tls["tls_version"] == 0x0304
    assert tls["cipher_suite"] in {0x1301, 0x1302, 0x1303}


@pytest.mark.usefixtures("limits")
def test_tls_1_2_reports_its_version_and_cipher_suite(pki: PKI) -> None:
    pki.install(pki.leaf())  # trustme's keys are ECDSA
    client = pki.client()
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers("ECDHE-ECDSA-AES256-GCM-SHA384")
    with scope_server(server_context(pki.files())) as server:
        get_twice(server.port, client)
    tls = server.scopes[0]["extensions"]["tls"]
    assert tls["tls_version"] == 0x0303
    assert tls["cipher_suite"] == 0xC02C  # IANA: TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384


@pytest.mark.usefixtures("limits")
def test_tls_without_client_certificates_names_no_client(pki: PKI) -> None:
    pki.install(pki.leaf())
    with scope_server(server_context(pki.files())) as server:
        get_twice(server.port, pki.client())
    scope = server.scopes[0]
    assert scope["scheme"] == "https"
    assert scope["extensions"]["tls"]["client_cert_chain"] == []
    assert scope["extensions"]["tls"]["client_cert_name"] is None
    assert client_cert_name(scope) is None


@pytest.mark.usefixtures("limits")
def test_plain_http_has_no_tls_extension() -> None:
    with scope_server(None) as server:
        get_twice(server.port, None)
    assert all(scope["scheme"] == "http" for scope in server.scopes)
    assert all("tls" not in scope.get("extensions", {}) for scope in server.scopes)
    assert client_cert_name(server.scopes[0]) is None
