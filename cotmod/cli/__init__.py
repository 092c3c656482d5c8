"""The ``cotmod`` command line (click), split by command group.

Library errors become one clear line at this boundary, and only here; user mistakes never print a
traceback (set COTMOD_DEBUG=1 to see one). Importing this package registers every command.
"""

from . import (  # noqa: F401  (register commands)
    _audit,
    _batch,
    _cascade,
    _estimate,
    _evals,
    _explain,
    _governance,
    _local,
    _moderate,
    _monitor,
    _policies,
    _serve,
)
from ._app import cli, main

__all__ = ["cli", "main"]
