"""`python -m services.payment.sync …`: the engine's commands (`python -m datasync`) with the
payment declaration as the default, as before the engine existed."""

from datasync.cli import app

app(prog_name="python -m services.payment.sync")
