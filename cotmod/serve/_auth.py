"""Bearer API keys for ``cotmod serve``: from a file (one key a line) and/or an environment
variable (one or more keys separated by commas or whitespace).

Only SHA-256 digests of the keys are kept in memory, and a presented key is compared with
:func:`hmac.compare_digest` against every digest, so the check takes the same time whichever key
matches. Keys are never logged or echoed in an error.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .._exceptions import ConfigError

__all__ = ["ApiKeys", "load_api_keys"]

_KEY = re.compile(r"^[\x21-\x7e]{8,512}$")  # printable ASCII, no spaces


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True)
class ApiKeys:
    """The accepted keys (digests only). Empty: authentication is off."""

    digests: tuple[bytes, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def __len__(self) -> int:
        return len(self.digests)

    @classmethod
    def of(cls, keys: list[str]) -> ApiKeys:
        return cls(tuple(dict.fromkeys(_digest(k) for k in keys)))

    def check(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries an accepted bearer key (always
        True when authentication is off)."""
        if not self.digests:
            return True
        if not authorization:
            return False
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        presented = _digest(token.strip())
        ok = False
        for d in self.digests:  # no early exit: constant time over the key list
            ok |= hmac.compare_digest(presented, d)
        return ok


def _check_key(key: str, where: str) -> str:
    if not _KEY.match(key):
        raise ConfigError(f"{where}: not a usable API key (8 to 512 printable ASCII characters, no spaces)")
    return key


def load_api_keys(file: str | Path | None = None, env: str | None = None) -> ApiKeys:
    """The keys of ``file`` (one a line; blank lines and lines starting with ``#`` are skipped)
    and of the environment variable ``env``. A named source that is missing, unreadable or holds
    no key is a :class:`~cotmod.ConfigError` naming it (and the line, for a bad key; never the
    key itself). Neither given: authentication is off (an empty :class:`ApiKeys`)."""
    keys: list[str] = []
    if file is not None:
        path = Path(file)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: API keys file not found") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: API keys file is not valid UTF-8") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the API keys file: {exc.strerror or exc}") from None
        found = 0
        for n, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            keys.append(_check_key(line, f"{path}:{n}"))
            found += 1
        if not found:
            raise ConfigError(f"{path}: the API keys file holds no key (one key a line)")
    if env is not None:
        value = os.environ.get(env)
        if value is None or not value.strip():
            raise ConfigError(f"environment variable {env} is not set or empty (it should hold the API key(s))")
        for i, part in enumerate(p for p in re.split(r"[\s,]+", value) if p):
            keys.append(_check_key(part, f"{env} (key {i + 1})"))
    return ApiKeys.of(keys)
