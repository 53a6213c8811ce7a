"""The payment data sync: backfill, follow, to-legacy, reconcile, the CLI, Oracle statements."""
