"""TLS on the proxy's listeners: one server context per listener role, its certificate reloaded
in place, and each connection's TLS facts in the request scope (the ASGI TLS extension).

Listeners:
- external: `tls_cert` + `tls_key` when set, else plain HTTP;
- internal: `internal_tls_cert` + `internal_tls_key`; with `internal_client_ca` every client must
  present a certificate that CA signed, or the handshake fails before any HTTP byte is read
  (nginx's `ssl_verify_client on`, Envoy's `require_client_certificate`);
- admin: always plain HTTP (a loopback address, or a token).

Every context follows Mozilla's "intermediate" server profile (v5.7): TLS 1.2 and 1.3 only; on
TLS 1.2 only ECDHE/DHE key exchange with AEAD ciphers; the client's cipher order (it knows
whether it has AES hardware); no compression (CRIME); no session tickets (their keys never
rotate in a running process; nginx's `ssl_session_tickets off`). ALPN offers http/1.1 only,
the one protocol the proxy speaks (a cross-protocol client, ALPACA, is refused at the handshake).
A handshake is timed like a request head (`header_timeout`, see server.py).

Reload (Envoy watches its certificate files the same way; nginx needs a reload signal): every
`tls_reload_interval` seconds each file's inode, size and mtime are compared with the last check.
A change is loaded into a scratch context first, and only a set of files that loads there is
loaded into the listener's own context, the object its server socket holds: new handshakes get
the new certificate, open connections keep the one they were accepted with (OpenSSL copies it
into each connection). A set that does not load is logged once and the old certificate is still
served: a failed load into the live context would leave it with a certificate and no matching
key. A changed client CA file adds its certificates to the trust store; OpenSSL's store only
grows, so a CA removed from the file stays trusted until the proxy restarts.

The scope of a request on a TLS connection carries scope["extensions"]["tls"] as the ASGI TLS
extension defines it, computed once per connection (`connection_tls`): the client certificate,
verified by the handshake, as PEM (Python's ssl module exposes the client's own certificate, not
the rest of its chain) and its subject as an RFC 4514 string, the TLS version and the cipher
suite as their IANA numbers. `server_cert` is None: which certificate a connection was given
is not exposed by Python's ssl module.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from proxy.settings import ProxySettings
from proxy.types import Scope

log = logging.getLogger("strangler")

# Mozilla's intermediate TLS 1.2 ciphers (v5.7); TLS 1.3's suites are OpenSSL's, all AEAD.
INTERMEDIATE_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)
ALPN = ["http/1.1"]
# The protocol version numbers of the TLS RFCs (RFC 8446 §4.1.2: legacy_version).
TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}

FileState = tuple[int, int, int] | None  # inode, size, mtime (ns); None: cannot be read
TLSExtension = dict[str, Any]


@dataclass(frozen=True)
class TLSFiles:
    """What one listener serves: its certificate chain and key, and the CA that must have signed
    its clients' certificates (None: no client certificate is asked for)."""

    role: str
    cert: Path
    key: Path
    client_ca: Path | None = None

    def named(self) -> list[tuple[str, Path]]:
        files = [("certificate", self.cert), ("key", self.key)]
        return files if self.client_ca is None else [*files, ("client CA", self.client_ca)]


def tls_files(settings: ProxySettings) -> dict[str, TLSFiles]:
    """The listener roles that serve TLS, with their files (the admin listener never does)."""
    found: dict[str, TLSFiles] = {}
    if settings.tls_cert is not None and settings.tls_key is not None:
        found["external"] = TLSFiles("external", settings.tls_cert, settings.tls_key)
    if settings.internal_tls_cert is not None and settings.internal_tls_key is not None:
        found["internal"] = TLSFiles(
            "internal",
            settings.internal_tls_cert,
            settings.internal_tls_key,
            settings.internal_client_ca,
        )
    return found


def new_context(*, client_certificates: bool) -> ssl.SSLContext:
    """An empty server context with the intermediate profile's settings."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(INTERMEDIATE_CIPHERS)
    # No client-initiated TLS 1.2 renegotiation: a CPU cost for nothing, and the connection's
    # mTLS identity is read once, at the handshake.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_TICKET | ssl.OP_NO_RENEGOTIATION
    context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(ALPN)
    if client_certificates:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """A listener's context with its files loaded; ValueError naming a file that does not load."""
    context = new_context(client_certificates=files.client_ca is not None)
    load_files(context, files)
    return context


def load_files(context: ssl.SSLContext, files: TLSFiles) -> None:
    """Load `files` into `context`. ValueError names the file at fault: unreadable, not PEM, an
    encrypted key (never prompted for: a server has no terminal), a key of another certificate."""
    role = files.role
    for what, path in files.named():
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError(f"cannot read the {role} TLS {what} {path}: {exc.strerror}") from None
    try:  # a certificate that is not one is blamed first, not its key
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=files.cert)
    except ssl.SSLError as exc:
        raise ValueError(
            f"the {role} TLS certificate {files.cert} is not a PEM certificate ({_why(exc)})"
        ) from None

    def encrypted() -> bytes:
        raise ValueError(f"the {role} TLS key {files.key} is encrypted: give it unencrypted")

    try:
        context.load_cert_chain(files.cert, files.key, password=encrypted)
    except ssl.SSLError as exc:
        raise ValueError(
            f"the {role} TLS key {files.key} is not the PEM private key of {files.cert}"
            f" ({_why(exc)})"
        ) from None
    if files.client_ca is not None:
        try:
            context.load_verify_locations(cafile=files.client_ca)
        except ssl.SSLError as exc:
            raise ValueError(
                f"the {role} client CA {files.client_ca} is not a PEM certificate ({_why(exc)})"
            ) from None


def _why(exc: ssl.SSLError) -> str:
    reason = exc.reason if isinstance(exc.reason, str) and exc.reason != "PEM_LIB" else None
    return reason.lower().replace("_", " ") if reason else "no PEM data it can use"


def file_states(files: TLSFiles) -> tuple[FileState, ...]:
    states: list[FileState] = []
    for _, path in files.named():
        try:
            found = os.stat(path)  # follows symlinks: a Kubernetes secret swap changes the inode
        except OSError:
            states.append(None)
        else:
            states.append((found.st_ino, found.st_size, found.st_mtime_ns))
    return tuple(states)


class ListenerTLS:
    """One listener's TLS: the context its server socket holds, reloaded in place."""

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        # Taken before the load: a change made while the files load is seen at the next check.
        self.seen: tuple[FileState, ...] | None = file_states(files)
        self.context = server_context(files)

    def reload_if_changed(self) -> bool:
        """Load the files into the live context if they changed and load; True when they did."""
        now = file_states(self.files)
        if now == self.seen:
            return False
        self.seen = now  # a set that does not load is logged once, not at every check
        try:
            server_context(self.files)  # the live context only ever gets files that load
        except ValueError as exc:
            log.error("%s; still serving the previous certificate", exc)
            return False
        try:
            load_files(self.context, self.files)
        except ValueError as exc:  # the files changed again between the two loads
            self.seen = None  # loaded again at the next check
            log.error("%s (the files changed while loading: loaded again at the next check)", exc)
            return False
        log.info(
            "the %s listener's TLS certificate reloaded from %s", self.files.role, self.files.cert
        )
        return True


async def reload_certificates(listeners: Iterable[ListenerTLS], interval: float) -> None:
    """Check every listener's files each `interval` seconds (one task per worker)."""
    watched = list(listeners)
    while True:
        await asyncio.sleep(interval)
        for listener in watched:
            try:
                listener.reload_if_changed()
            except Exception:  # never let the watch die: the next rotation must still be seen
                log.exception("checking the %s listener's TLS files failed", listener.files.role)


def connection_tls(transport: asyncio.BaseTransport) -> TLSExtension | None:
    """The ASGI TLS extension of a connection (None for plain HTTP). A client certificate is
    reported only where the context required one: the handshake has verified it."""
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = None
    if ssl_object.context.verify_mode == ssl.CERT_REQUIRED:
        der = ssl_object.getpeercert(binary_form=True)
    cipher = ssl_object.cipher()
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": subject_name(der) if der else None,
        "client_cert_error": None,
        "tls_version": TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": cipher_ids().get(cipher[0]) if cipher else None,
    }


def subject_name(der: bytes) -> str:
    """A certificate's subject as an RFC 4514 string, most specific first ("CN=orders,O=...")."""
    from cryptography import x509  # only connections with a client certificate pay the import

    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


@cache
def cipher_ids() -> dict[str, int]:
    """OpenSSL's cipher names → their IANA numbers (the low 16 bits of OpenSSL's ids)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_ciphers("ALL:@SECLEVEL=0")
    return {cipher["name"]: cipher["id"] & 0xFFFF for cipher in context.get_ciphers()}


def client_cert_name(scope: Scope) -> str | None:
    """The subject (RFC 4514) of the verified client certificate of the request's connection;
    None on plain HTTP or without a client certificate."""
    tls = (scope.get("extensions") or {}).get("tls")
    return tls.get("client_cert_name") if tls else None
