"""`python -m services.payment.sync …`: the same commands as `strangler sync …`."""

from services.payment.sync.cli import main

main()
