"""rdfunnel: an async SDK for RD Station Marketing's contact funnel."""

from .__about__ import __version__
from .bulk import BulkResult, BulkRun, BulkSummary
from .client import RDStation
from .models import NOT_SET, Contact, Funnel, FunnelUpdate, LifecycleStage
from .ratelimit import LocalRateLimiter, RateLimiter
from .retry import RetryPolicy

__all__ = [
    "NOT_SET",
    "BulkResult",
    "BulkRun",
    "BulkSummary",
    "Contact",
    "Funnel",
    "FunnelUpdate",
    "LifecycleStage",
    "LocalRateLimiter",
    "RDStation",
    "RateLimiter",
    "RetryPolicy",
    "__version__",
]
