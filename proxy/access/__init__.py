"""Who may call what: consumers and their credentials (API keys, JWT, mTLS identities), access
per route, and rate limits shared by replicas. The pure parts decide; the stores and the key
fetchers do the I/O beside the request path."""

from __future__ import annotations


class CredentialRefused(Exception):
    """A credential was presented but cannot be accepted (unknown, revoked, expired, badly
    signed, wrong audience...); the message says why, and becomes the 401 answer's detail."""
