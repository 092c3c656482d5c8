"""Reading the small YAML files users hand to cotmod (label mappings, thresholds, the
enforcement manifest) with one clear error per problem. Policy files have their own loader with
line numbers (:mod:`cotmod.policy._lint`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ._exceptions import InputError

__all__ = ["read_yaml_mapping"]


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file ({} if the file is empty); ``what`` names the file
    in errors ("label mapping", "thresholds file", ...)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not valid UTF-8 ({exc.reason})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping at the top level of the {what}")
    return data
