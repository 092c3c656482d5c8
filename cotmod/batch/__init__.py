"""At-scale moderation: the resumable batch runner, its input reader and run store, and the
provider Batch API path."""

from ._provider import export_batch, import_batch
from ._reader import Row, count_rows, detect_format, read_items, read_records
from ._runner import ItemSource, Runner, RunSummary, is_fatal
from ._store import errors_path, manifest_path, repair_jsonl

__all__ = [
    "ItemSource",
    "Row",
    "RunSummary",
    "Runner",
    "count_rows",
    "detect_format",
    "errors_path",
    "export_batch",
    "import_batch",
    "is_fatal",
    "manifest_path",
    "read_items",
    "read_records",
    "repair_jsonl",
]
