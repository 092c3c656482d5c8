"""Backends: the OpenAI-compatible transport, load control, and the embedded local model."""

from ._limits import AdaptiveLimiter, LimitedBackend, RateLimiter
from ._openai import Backend, ChatRequest, ChatResult, OpenAIBackend

__all__ = ["AdaptiveLimiter", "Backend", "ChatRequest", "ChatResult", "LimitedBackend", "OpenAIBackend", "RateLimiter"]
