"""Child-process entry point that runs the xllamacpp server until SIGTERM/SIGINT.

``python -m cotmod.backends._serve '{"model": PATH, "port": N, "n_ctx": N, "threads": N, "n_parallel": N}'``
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any


def _watch_parent(pid: int) -> None:
    """Stop when the process that started us is gone (even after kill -9 of the parent)."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != pid:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve(params: dict[str, Any], on_ready: Callable[[str], None] | None = None) -> None:
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = params["model"]
    p.hostnames = ["127.0.0.1"]
    p.port = int(params["port"])
    p.n_parallel = int(params.get("n_parallel", 2))
    p.n_ctx = int(params["n_ctx"]) * p.n_parallel
    p.cpuparams.n_threads = int(params["threads"])
    p.cpuparams_batch.n_threads = int(params["threads"])
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    parent = params.get("parent_pid")
    if parent:
        _watch_parent(int(parent))
    server = xllamacpp.Server(p)
    if on_ready is not None:
        on_ready(f"http://127.0.0.1:{p.port}/v1")
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    del server


if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses
    serve(json.loads(sys.argv[1]), lambda url: print(f"ready {url}", flush=True))
