"""``cotmod serve``: an HTTP moderation service (OpenAI Moderation API compatible) with Prometheus
metrics, an audit log and a playground page. Needs the ``serve`` extra
(``pip install 'cotmod[serve]'``: FastAPI, uvicorn, prometheus-client)."""

from ._app import ApiError, ReadyCheck, ServeConfig, create_app
from ._auth import ApiKeys, load_api_keys
from ._metrics import ServeMetrics
from ._server import ServerThread, run_server

__all__ = [
    "ApiError",
    "ApiKeys",
    "ReadyCheck",
    "ServeConfig",
    "ServeMetrics",
    "ServerThread",
    "create_app",
    "load_api_keys",
    "run_server",
]
