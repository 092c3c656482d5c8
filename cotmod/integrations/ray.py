"""Ray Data scale-out for cotmod (``pip install 'cotmod[ray]'``).

Moderate a ``ray.data.Dataset`` of items (``id``, ``text``, optional metadata such as classifier
scores) into a dataset of flat verdict rows with a pool of async actors, each holding an
:class:`~cotmod.AsyncModerator`; write them resumably to Parquet or JSONL::

    import ray
    from cotmod import Settings
    from cotmod.integrations.ray import moderate_to

    ray.init()                                   # or ray.init(address="auto") on a cluster
    items = ray.data.read_parquet("items/")
    summary = moderate_to(items, "verdicts/", settings=Settings(base_url=..., model=...), actors=4)

See :mod:`cotmod.integrations._ray` for the row format and the guarantees.
"""

from ._ray import (
    ModerateBatch,
    ModeratorSpec,
    RayRunSummary,
    moderate_dataset,
    moderate_to,
    read_done_ids,
    verdict_row,
    verdict_schema,
)

__all__ = [
    "ModerateBatch",
    "ModeratorSpec",
    "RayRunSummary",
    "moderate_dataset",
    "moderate_to",
    "read_done_ids",
    "verdict_row",
    "verdict_schema",
]
