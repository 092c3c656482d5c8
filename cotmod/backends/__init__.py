"""Backends: the OpenAI-compatible transport, load control, and the embedded local model."""

from ._circuit import CircuitBreaker, CircuitStats
from ._limits import AdaptiveLimiter, LimitedBackend, LimiterStats, RateLimiter
from ._openai import (
    AttemptHooks,
    Backend,
    ChatRequest,
    ChatResult,
    OpenAIBackend,
    TransportStats,
    check_base_url,
)

__all__ = [
    "AdaptiveLimiter",
    "AttemptHooks",
    "Backend",
    "ChatRequest",
    "ChatResult",
    "CircuitBreaker",
    "CircuitStats",
    "LimitedBackend",
    "LimiterStats",
    "OpenAIBackend",
    "RateLimiter",
    "TransportStats",
    "check_base_url",
]
