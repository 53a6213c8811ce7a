"""Unit tests of the proxy: the pure core (no sockets, no event loop) and the routes CLI."""
