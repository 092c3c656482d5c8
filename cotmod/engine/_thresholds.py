"""Operating thresholds (written by ``cotmod tune``) and how the engine applies them.

For a policy with thresholds, the decision's ``score`` picks a band:

* ``score >= auto_action`` → ``auto_action``: enforce the tier's action automatically;
* ``score >= review``      → ``human_review``: escalate to a human (the model's decision stands
  until reviewed);
* otherwise               → ``allow``: not a violation at this operating point.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .._exceptions import InputError
from .._yamlfile import read_yaml_mapping

__all__ = ["apply_band", "load_thresholds"]


def load_thresholds(path: str | Path | None) -> dict[str, dict[str, float]]:
    if path is None:
        return {}
    p = Path(path)
    th = read_yaml_mapping(p, "thresholds file").get("thresholds")
    if not isinstance(th, dict):
        raise InputError(f"{p}: expected 'thresholds: {{POLICY: {{review: x, auto_action: y}}}}'")
    out: dict[str, dict[str, float]] = {}
    for pid, spec in th.items():
        if not isinstance(spec, dict) or "review" not in spec:
            raise InputError(f"{p}: thresholds.{pid} needs at least 'review'")
        values: dict[str, float] = {}
        for key in ("review", "auto_action"):
            if key not in spec or spec[key] is None:
                continue
            raw = spec[key]
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or not 0 <= raw <= 1:
                raise InputError(f"{p}: thresholds.{pid}.{key}: expected a number from 0 to 1, got {raw!r}")
            values[key] = float(raw)
        if "auto_action" in values and values["auto_action"] < values["review"]:
            raise InputError(
                f"{p}: thresholds.{pid}: auto_action ({values['auto_action']}) is below review ({values['review']}); "
                "items would be enforced automatically before a human could review them"
            )
        out[str(pid)] = values
    return out




def apply_band(decision: Any, policy: Any, th: dict[str, float]) -> Any:
    """A copy of ``decision`` with ``band`` set and violates/action/escalate adjusted."""
    score = float(decision.score)
    auto = th.get("auto_action")
    if auto is not None and score >= auto and decision.violates:
        band = "auto_action"
        upd: dict[str, Any] = {}
    elif score >= th["review"]:
        band = "human_review"
        upd = {"escalate": True}
    else:
        band = "allow"
        upd = {"violates": False, "action": "allow", "severity": None}
    return decision.model_copy(update={"band": band, **upd})
