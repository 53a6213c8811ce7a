"""`python -m proxy` is `strangler`."""

from proxy.cli import main

main()
