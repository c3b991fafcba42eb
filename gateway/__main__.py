"""``python -m gateway`` is the ``edgeinfer`` command."""

from gateway.cli import main

main()
