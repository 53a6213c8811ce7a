"""`python -m datasync …`: the same commands as `strangler sync …`."""

from datasync.cli import main

main()
