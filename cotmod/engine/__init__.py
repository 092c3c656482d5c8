"""The engine: moderators (sync/async twins), the result cache and decision thresholds."""

from ._cache import Cache, MemoryCache, SqliteCache
from ._moderator import AsyncModerator, GroupOutcome, Item, Moderator, TriageOutcome
from ._thresholds import apply_band, load_thresholds

__all__ = [
    "AsyncModerator",
    "Cache",
    "GroupOutcome",
    "Item",
    "MemoryCache",
    "Moderator",
    "SqliteCache",
    "TriageOutcome",
    "apply_band",
    "load_thresholds",
]
