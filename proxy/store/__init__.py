"""Versioned route tables: every change is a new immutable version with author, time and
reason; the current one is what the proxies serve."""
