"""Tests of proxy.dataplane's pure parts: path keys, matching, splits and headers."""
