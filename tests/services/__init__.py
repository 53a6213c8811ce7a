"""Tests of the extracted services, one package each."""
