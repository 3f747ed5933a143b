"""A faithful fake RD Station Marketing server, in the box: test against it, not production.

``async with FakeRDStation() as fake:`` serves the OAuth and funnel endpoints on 127.0.0.1 with RD's
exact bodies, and can fail the ways RD fails (:class:`Faults`) and push back as RD does
(:class:`Limits`). ``python -m rdfunnel.testing`` runs it standalone; the pytest plugin gives the
``rdstation_fake`` and ``rdstation`` fixtures.
"""

from ._config import Faults, Limits
from ._contacts import FakeContact
from ._server import FakeRDStation
from ._stats import Stats

__all__ = ["FakeContact", "FakeRDStation", "Faults", "Limits", "Stats"]
