"""Golden-set evaluation: golden sets, metrics, the harness, tuning, comparison and reports."""

from ._compare import compare_runs, tune
from ._golden import GoldenItem, GoldenSet, LabelMapping, load_golden, load_mapping
from ._harness import compute_metrics, run_eval

__all__ = ["GoldenItem", "GoldenSet", "LabelMapping", "compare_runs", "compute_metrics", "load_golden", "load_mapping", "run_eval", "tune"]
