"""Test-only tables the sync engine has never seen, declared in YAML next to this file, and the
databases they live in (SQLite files, or PostgreSQL schemas of one database per session)."""
