"""The payment service: contract parity with the monolith, idempotency, ids, events, migrations."""
