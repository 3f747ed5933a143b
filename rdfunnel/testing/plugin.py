"""The pytest plugin (entry point ``pytest11: rdfunnel``): ``rdstation_fake`` and ``rdstation``.

Options for the fake come from the ``rdstation_fake_options`` fixture (override it in a conftest)
and then from ``@pytest.mark.rdstation_fake(**options)`` on a test. The fake and the client are
imported inside the fixtures, when a test first asks for them.

The fixtures are async, declared with ``pytest_asyncio.fixture``, so they work in pytest-asyncio's
strict mode and in its auto mode alike. Install pytest-asyncio with ``pip install
'rdfunnel[testing]'``; without it, a test that asks for them fails with a message that says so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from rdfunnel import RDStation

    from ._server import FakeRDStation

__all__ = ["rdstation", "rdstation_fake", "rdstation_fake_options"]

try:
    import pytest_asyncio

    HAVE_PYTEST_ASYNCIO = True
except ImportError:  # the fixtures then fail with a clear message
    HAVE_PYTEST_ASYNCIO = False

#: What a test that asks for the fixtures is told when pytest-asyncio is not installed.
NEEDS_PYTEST_ASYNCIO = (
    "the rdstation_fake and rdstation fixtures need pytest-asyncio, which is not installed: "
    "pip install 'rdfunnel[testing]' (or pip install pytest-asyncio)"
)

#: The ``rdstation`` client's backoffs, in seconds: a test of retries should not wait for them.
#: The number of retries is the default policy's, and wait hints (``Retry-After``) are obeyed.
BACKOFF_BASE = 0.001
BACKOFF_CAP = 0.01


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "rdstation_fake(**options): keyword arguments for the rdstation_fake fixture's "
        "FakeRDStation (e.g. auto_create=True, faults=Faults(...), limits=Limits(...))",
    )


@pytest.fixture
def rdstation_fake_options() -> dict[str, Any]:
    """FakeRDStation keyword arguments for every test in scope; override to change defaults."""
    return {}


async def _rdstation_fake(
    request: pytest.FixtureRequest, rdstation_fake_options: dict[str, Any]
) -> AsyncIterator[FakeRDStation]:
    """A running FakeRDStation on 127.0.0.1, closed after the test."""
    from ._server import FakeRDStation

    options = dict(rdstation_fake_options)
    for marker in reversed(list(request.node.iter_markers("rdstation_fake"))):
        options.update(marker.kwargs)
    async with FakeRDStation(**options) as fake:
        yield fake


async def _rdstation(rdstation_fake: FakeRDStation) -> AsyncIterator[RDStation]:
    """An RDStation client bound to ``rdstation_fake``, closed after the test.

    It retries as the default :class:`~rdfunnel.RetryPolicy` does, with millisecond backoffs.
    """
    from rdfunnel import RetryPolicy

    retry = RetryPolicy(backoff_base=BACKOFF_BASE, backoff_cap=BACKOFF_CAP)
    async with rdstation_fake.client(retry=retry) as client:
        yield client


def _needs_pytest_asyncio() -> NoReturn:
    pytest.fail(NEEDS_PYTEST_ASYNCIO, pytrace=False)


# Without pytest-asyncio, pytest would not run an async fixture at all (it fails the test with a
# message of its own, or an AssertionError): plain fixtures that say what is missing stand in.
rdstation_fake: Any
rdstation: Any
if HAVE_PYTEST_ASYNCIO:
    rdstation_fake = pytest_asyncio.fixture(_rdstation_fake, name="rdstation_fake")
    rdstation = pytest_asyncio.fixture(_rdstation, name="rdstation")
else:
    rdstation_fake = pytest.fixture(_needs_pytest_asyncio, name="rdstation_fake")
    rdstation = pytest.fixture(_needs_pytest_asyncio, name="rdstation")
