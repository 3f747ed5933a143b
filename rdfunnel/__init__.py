"""rdfunnel: an async SDK for RD Station Marketing's contact funnel."""

from .__about__ import __version__
from ._clock import Clock
from .bulk import BulkResult, BulkRun, BulkSummary
from .client import RDStation
from .models import NOT_SET, Contact, Funnel, FunnelUpdate, LifecycleStage
from .oauth import OAuthApp
from .ratelimit import LocalRateLimiter, RateLimiter
from .retry import RetryPolicy
from .tokens import FileTokenStore, MemoryTokenStore, Token, TokenStore, TokenStoreError

__all__ = [
    "NOT_SET",
    "BulkResult",
    "BulkRun",
    "BulkSummary",
    "Clock",
    "Contact",
    "FileTokenStore",
    "Funnel",
    "FunnelUpdate",
    "LifecycleStage",
    "LocalRateLimiter",
    "MemoryTokenStore",
    "OAuthApp",
    "RDStation",
    "RateLimiter",
    "RetryPolicy",
    "Token",
    "TokenStore",
    "TokenStoreError",
    "__version__",
]
