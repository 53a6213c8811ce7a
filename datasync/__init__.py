"""The data sync engine: moves any declared legacy table to a service's database and back.

A sync is declared in a YAML file (`declaration.py`), compiled to a `Spec` (`spec.py`), and run
by one engine for every table: backfill, follow (before cutover), to-legacy (after),
reconcile, status and the cutover gate, and declared compensations. Nothing is ever installed in
the legacy database; all sync state lives in the service's database.
"""
