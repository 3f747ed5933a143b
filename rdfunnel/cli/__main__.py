"""``python -m rdfunnel.cli``: the ``rdfunnel`` command."""

from . import main

main()
