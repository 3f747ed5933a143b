"""The pytest plugin (entry point ``pytest11: rdfunnel``): ``rdstation_fake`` and ``rdstation``.

Options for the fake come from the ``rdstation_fake_options`` fixture (override it in a conftest)
and then from ``@pytest.mark.rdstation_fake(**options)`` on a test. The fake and the client are
imported inside the fixtures, when a test first asks for them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pytest

if TYPE_CHECKING:
    from rdfunnel import RDStation

    from ._server import FakeRDStation

__all__ = ["rdstation", "rdstation_fake", "rdstation_fake_options"]

_F = TypeVar("_F", bound=Callable[..., Any])

try:
    import pytest_asyncio

    _HAVE_PYTEST_ASYNCIO = True
except ImportError:  # pragma: no cover - the fixtures then fail with a clear message
    _HAVE_PYTEST_ASYNCIO = False


def _async_fixture(function: _F) -> _F:
    """``pytest_asyncio.fixture`` (works in strict and auto mode), or a plain fixture without it."""
    if _HAVE_PYTEST_ASYNCIO:
        return cast(_F, pytest_asyncio.fixture(function))
    return cast(_F, pytest.fixture(function))


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


@_async_fixture
async def rdstation_fake(
    request: pytest.FixtureRequest, rdstation_fake_options: dict[str, Any]
) -> AsyncIterator[FakeRDStation]:
    """A running FakeRDStation on 127.0.0.1, closed after the test."""
    if not _HAVE_PYTEST_ASYNCIO:  # pragma: no cover
        pytest.fail("the rdstation_fake fixture needs pytest-asyncio (pip install pytest-asyncio)")
    from ._server import FakeRDStation

    options = dict(rdstation_fake_options)
    for marker in reversed(list(request.node.iter_markers("rdstation_fake"))):
        options.update(marker.kwargs)
    async with FakeRDStation(**options) as fake:
        yield fake


@_async_fixture
async def rdstation(rdstation_fake: FakeRDStation) -> AsyncIterator[RDStation]:
    """An RDStation client bound to ``rdstation_fake``, closed after the test."""
    async with rdstation_fake.client() as client:
        yield client
