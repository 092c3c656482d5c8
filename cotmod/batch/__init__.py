"""At-scale moderation: the resumable batch runner and the provider Batch API path."""

from ._provider import export_batch, import_batch
from ._runner import Runner, RunSummary, read_items

__all__ = ["RunSummary", "Runner", "export_batch", "import_batch", "read_items"]
