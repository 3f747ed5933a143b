"""``examples/observability_app.py`` as a user runs it: /metrics and spans, and no email in them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from rdfunnel import RetryPolicy
from rdfunnel.contrib.otel import OpenTelemetryHooks
from rdfunnel.contrib.prometheus import PrometheusHooks
from rdfunnel.testing import FakeRDStation, Faults

from .test_fastapi import serve

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "observability_app.py"
EMAIL = "contact-1@example.com"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rdfunnel_observability_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


example = _load()


async def test_metrics_and_spans_without_emails() -> None:
    registry = CollectorRegistry()
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    hooks = [
        PrometheusHooks(registry=registry),
        OpenTelemetryHooks(tracer_provider=tracer_provider, meter_provider=meter_provider),
    ]
    fast = RetryPolicy(max_retries=3, backoff_base=0.0, jitter=False)
    async with FakeRDStation(contacts=5, faults=Faults(json_503=0.3, seed=1)) as fake:
        app = example.create_app(
            lambda: fake.client(hooks=hooks, retry=fast), registry=registry, telemetry=False
        )
        async with serve(app) as http:
            for _ in range(4):
                answer = await http.get(f"/contacts/{EMAIL}/stage")
                assert answer.status_code == 200, answer.text
                assert answer.json() == {"lifecycle_stage": "Lead"}
            metrics = (await http.get("/metrics/")).text
        requests = fake.stats.requests
    assert "rdfunnel_requests_total{" in metrics
    assert 'route="/platform/contacts/{contact}/funnels/{funnel}"' in metrics
    assert 'rdfunnel_token_refreshes_total{outcome="ok"} 1.0' in metrics
    names = [span.name for span in spans.get_finished_spans()]
    assert names.count("rdfunnel funnels.get") == 4
    assert "rdfunnel token.refresh" in names
    attempts = [span for span in spans.get_finished_spans() if span.kind.name == "CLIENT"]
    assert len(attempts) == sum(requests.values())
    shown = metrics + repr([(s.name, dict(s.attributes or {})) for s in spans.get_finished_spans()])
    shown += reader.get_metrics_data().to_json()
    assert EMAIL not in shown and "contact-1" not in shown
