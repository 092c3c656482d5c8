"""Prices (USD per 1M tokens: input, output) for cost estimates. Override per run with
``--price-in/--price-out``. Local models cost nothing per token. Prices change: check your
provider's page; these are list prices as of 2026 for common moderation-sized models."""

from __future__ import annotations

__all__ = ["PRICES", "price_for"]

PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1": (2.00, 8.00),
    "gpt-oss-safeguard-20b": (0.075, 0.30),
    "gpt-oss-20b": (0.075, 0.30),
    "gpt-oss-120b": (0.15, 0.60),
}


def price_for(model: str) -> tuple[float | None, float | None]:
    """(input, output) price per 1M tokens; (0, 0) for the packaged local models; None if unknown."""
    from ._local import MODELS

    if model in MODELS or model.endswith(".gguf"):
        return 0.0, 0.0
    if model in PRICES:
        return PRICES[model]
    for name in sorted(PRICES, key=len, reverse=True):
        if model.startswith(name):
            return PRICES[name]
    return None, None
