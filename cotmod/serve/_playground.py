"""The playground page (``GET /``): a single self-contained HTML file (``static/playground.html``,
no network resources) whose script calls the service's own API: ``POST /v1/verdicts`` for the
verdict and ``POST /v1/render`` for the exact prompts. The server fills in the policies and
settings it shows (a JSON object in the page; ``</`` is escaped so it cannot close the script).

The page reads ``?text=...&policies=a,b&run=1`` to fill the form and moderate at once (links to a
case; the browser test uses it); the text never reaches the access log (no query strings there).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

__all__ = ["playground_html"]

_SLOT = "/*COTMOD_CONFIG*/null"


@lru_cache(maxsize=1)
def _template() -> str:
    text = resources.files("cotmod.serve").joinpath("static/playground.html").read_text(encoding="utf-8")
    if _SLOT not in text:
        raise RuntimeError("playground.html has no config slot")
    return text


def playground_html(config: dict[str, Any]) -> str:
    """The page with ``config`` (policies, evidence, auth, version, model) embedded."""
    data = json.dumps(config, ensure_ascii=True).replace("</", "<\\/")
    return _template().replace(_SLOT, data, 1)
