"""Tests of proxy.table: routes.yaml parsed, checked, compiled and shown."""
