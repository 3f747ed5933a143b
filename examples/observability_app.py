"""A FastAPI service on rdfunnel with Prometheus metrics and OpenTelemetry traces, wired as a
service would wire them.

- ``GET /contacts/{contact}/stage``: where a contact stands (one rdfunnel call).
- ``GET /metrics``: Prometheus's exposition, with the ``rdfunnel_*`` metrics.
- Traces: one ``rdfunnel funnels.get`` span per call, an HTTP client span per attempt, and a
  ``rdfunnel token.refresh`` span when the token is renewed; exported by the OpenTelemetry SDK
  (to the console here; point an OTLP exporter at your collector instead). The aiohttp
  instrumentor runs too, with rdfunnel's ``url_filter``, so none of its spans holds an email.

Run it against the fake RD Station, from a checkout with
``pip install -e '.[fastapi,otel,prometheus]' opentelemetry-sdk
opentelemetry-instrumentation-aiohttp-client uvicorn``::

    python -m rdfunnel.testing --port 8765 --contacts 1000 --print-env \
        | grep --line-buffered '^export' > /tmp/rdfake.env &
    sleep 1; . /tmp/rdfake.env
    uvicorn --factory examples.observability_app:create_app --port 8000
    curl localhost:8000/contacts/contact-1@example.com/stage
    curl localhost:8000/metrics | grep rdfunnel_

Contacts are personal data: metrics never label one, spans and log records show them masked.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app

from rdfunnel import RDStation
from rdfunnel.contrib.fastapi import RDStationDep, install_exception_handlers, rdstation_lifespan
from rdfunnel.contrib.otel import OpenTelemetryHooks, url_filter
from rdfunnel.contrib.prometheus import PrometheusHooks


def configure_telemetry() -> tuple[TracerProvider, MeterProvider]:
    """The service's OpenTelemetry SDK: set once, globally, as services usually do."""
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    meter_provider = MeterProvider()
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    AioHttpClientInstrumentor().instrument(url_filter=url_filter)
    return tracer_provider, meter_provider


def create_app(
    client_factory: Callable[[], RDStation] | None = None,
    registry: CollectorRegistry = REGISTRY,
    *,
    telemetry: bool = True,
) -> FastAPI:
    """The app; its client comes from ``client_factory``, else from the environment with both
    kinds of hooks (the global OpenTelemetry providers, ``registry`` for Prometheus).

    ``telemetry`` sets up the global OpenTelemetry SDK first (tests bring their own providers).
    """
    if telemetry:
        configure_telemetry()

    def from_env() -> RDStation:
        hooks = [PrometheusHooks(registry=registry), OpenTelemetryHooks()]
        return RDStation.from_env(hooks=hooks)

    app = FastAPI(
        title="rdfunnel observability example",
        lifespan=rdstation_lifespan(client_factory or from_env),
    )
    install_exception_handlers(app)
    app.mount("/metrics", make_asgi_app(registry=registry))

    @app.get("/contacts/{contact}/stage")
    async def stage(contact: str, rd: RDStationDep) -> dict[str, str | None]:
        funnel = await rd.funnels.get(contact)
        stage = None if funnel.lifecycle_stage is None else str(funnel.lifecycle_stage)
        return {"lifecycle_stage": stage}

    return app
