"""Integrations with other frameworks, each behind its own extra.

* :mod:`cotmod.integrations.ray` (``pip install 'cotmod[ray]'``): moderate a ``ray.data.Dataset``
  into a dataset of verdict rows with a pool of async actors, resumably, into Parquet or JSONL.

This package imports nothing heavy: each integration imports its framework when it is used.
"""

__all__: list[str] = []
