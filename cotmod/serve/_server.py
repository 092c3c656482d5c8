"""Running the app with uvicorn: in the foreground (``cotmod serve``) or on a background thread
(tests, benchmarks, notebooks).

Graceful shutdown is uvicorn's: on SIGINT/SIGTERM (or ``should_exit``) it stops accepting
connections, lets the requests in progress finish (at most ``drain_timeout`` seconds), then runs
the app's shutdown, which closes the moderator and fsyncs the audit log.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from typing import Any

__all__ = ["ServerThread", "run_server"]


def _config(app: Any, drain_timeout: float, **kw: Any) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        access_log=False,  # the app writes its own access log: no content, no keys, no query strings
        lifespan="on",
        timeout_graceful_shutdown=max(1, round(drain_timeout)),
        server_header=False,
        **kw,
    )


def run_server(app: Any, host: str, port: int, *, drain_timeout: float = 30.0, log_level: str = "info") -> None:
    """Serve ``app`` until SIGINT/SIGTERM, then drain (blocks) and return: a drained stop is a
    clean exit (uvicorn re-raises the signal it caught once it has shut down; it is ignored
    here, since the shutdown it asked for is done)."""
    import uvicorn

    server = uvicorn.Server(_config(app, drain_timeout, host=host, port=port, log_level=log_level))
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class ServerThread:
    """``app`` served by uvicorn on ``host`` (a random free port by default) on a daemon thread.

    >>> with ServerThread(app) as srv:          # doctest: +SKIP
    ...     requests.get(srv.base_url + "/healthz")
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, drain_timeout: float = 10.0) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = uvicorn.Server(_config(app, drain_timeout, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, name="cotmod-serve", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> ServerThread:
        """Start serving (once; starting a started server does nothing) and wait until it listens."""
        if self.thread.is_alive() or self.server.started:
            return self
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the server to exit (graceful: requests in progress finish) and wait for it."""
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
