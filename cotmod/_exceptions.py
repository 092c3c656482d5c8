"""The cotmod exception tree.

Every error cotmod raises on purpose derives from :class:`CotmodError`. The tree separates
*author mistakes* (a bad guideline file, a bad template, bad configuration: fix your files)
from *runtime failures* (the model or the transport misbehaved: retry, page someone)::

    CotmodError
    ├── UserError                      the caller's or author's mistake
    │   ├── PolicyError                a guideline file is invalid (carries LintIssue list)
    │   ├── TemplateError              a prompt template is invalid or misses a variable
    │   ├── ConfigError                bad endpoint/model/settings or config file
    │   └── InputError                 bad item (empty text, undecodable bytes, bad file row)
    ├── ModelNotAvailableError         a local model is not pulled, or its checksum is wrong
    ├── TransportError                 the endpoint could not be used
    │   ├── EndpointUnreachableError   connection refused / DNS / timeout after retries
    │   │   └── RequestTimeoutError    no response within the per-request timeout (--timeout)
    │   ├── AuthenticationError        401/403 (the key is never included in the message)
    │   ├── RateLimitedError           429 after all transport retries
    │   ├── ServerError                5xx (or other status) after all transport retries
    │   │   └── MalformedResponseError 200 whose body is not a chat completion (HTML, cut-off
    │   │                              or invalid JSON), after all transport retries
    │   └── CircuitOpenError           too many consecutive requests failed: refused without
    │                                  contacting the endpoint until the cool-down has passed
    └── ModelOutputError               the model's output failed validation after all re-asks
                                       (carries the raw output, attempts and token usage)

The CLI turns these into one clear line and a non-zero exit; the library never prints. Settings
that will not do what they seem to are a :class:`CotmodWarning` (Python's ``warnings``), not an
error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "AuthenticationError",
    "CircuitOpenError",
    "ConfigError",
    "CotmodError",
    "CotmodWarning",
    "EndpointUnreachableError",
    "InputError",
    "LintIssue",
    "MalformedResponseError",
    "ModelNotAvailableError",
    "ModelOutputError",
    "PolicyError",
    "RateLimitedError",
    "RequestTimeoutError",
    "ServerError",
    "TemplateError",
    "TransportError",
    "UserError",
]


class CotmodError(Exception):
    """Base class of every error cotmod raises on purpose."""


class CotmodWarning(UserWarning):
    """Issued (``warnings.warn``) for settings that will not do what they seem to, such as a
    classifier's thresholds file deciding on the LLM's scores. The CLI prints the same lines itself
    and silences these; a service can turn them into errors with
    ``warnings.simplefilter("error", cotmod.CotmodWarning)``."""


class UserError(CotmodError):
    """The caller's or policy author's mistake: fix the input, file or settings."""


@dataclass(frozen=True)
class LintIssue:
    """One problem in a guideline file: where it is and what is wrong."""

    file: str
    line: int | None
    field: str
    message: str
    code: str = "invalid"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        field = f" {self.field}:" if self.field else ""
        return f"{where}:{field} {self.message} [{self.code}]"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "field": self.field,
            "message": self.message,
            "code": self.code,
        }


class PolicyError(UserError):
    """One or more guideline files are invalid. ``issues`` lists every problem found."""

    def __init__(self, issues: list[LintIssue]) -> None:
        self.issues = list(issues)
        first = str(self.issues[0]) if self.issues else "invalid policy"
        more = f" (and {len(self.issues) - 1} more)" if len(self.issues) > 1 else ""
        super().__init__(first + more)


class TemplateError(UserError):
    """A prompt template failed to load or render (syntax error, missing variable)."""


class ConfigError(UserError):
    """Invalid configuration: endpoint, model, concurrency, config file, ..."""


class InputError(UserError):
    """An item to moderate is unusable (empty, undecodable, malformed row)."""


class ModelNotAvailableError(CotmodError):
    """A local model is missing, incomplete or failed its checksum."""


class TransportError(CotmodError):
    """The LLM endpoint could not be used, after transport retries."""

    def __init__(self, message: str, *, status_code: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.attempts = attempts


class EndpointUnreachableError(TransportError):
    """Connection refused, DNS failure or timeout."""


class AuthenticationError(TransportError):
    """The endpoint rejected the credentials (401/403)."""


class RateLimitedError(TransportError):
    """The endpoint kept answering 429 after all transport retries."""


class ServerError(TransportError):
    """The endpoint kept failing (5xx or another unexpected status)."""


class RequestTimeoutError(EndpointUnreachableError):
    """No complete response within the per-request timeout (``Settings.timeout``) on the last
    of the call's attempts (each attempt is bounded by it).

    ``timeout`` is the per-request limit in seconds."""

    def __init__(self, message: str, *, timeout: float, attempts: int = 1) -> None:
        super().__init__(message, attempts=attempts)
        self.timeout = timeout


class MalformedResponseError(ServerError):
    """The endpoint answered HTTP 200 with a body that is not a chat completion (an HTML page
    from a proxy, a cut-off or otherwise invalid JSON body, no choices) on the last of the call's
    attempts. A transport failure, retried like a 5xx; never sent back to the model as a
    validation re-ask."""


class CircuitOpenError(TransportError):
    """The backend's circuit breaker is open: ``failures`` consecutive requests exhausted their
    retries on 429/5xx, so requests are refused without contacting the endpoint until
    ``retry_at`` (the backend's clock); then one probe request decides whether to close it.
    ``status_code`` is the last failure's HTTP status; ``attempts`` is 0 (nothing was sent)."""

    def __init__(
        self,
        message: str,
        *,
        failures: int,
        retry_in: float,
        retry_at: float,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, attempts=0)
        self.failures = failures
        self.retry_in = retry_in
        self.retry_at = retry_at


class ModelOutputError(CotmodError):
    """The model's output could not be parsed or validated after every allowed re-ask."""

    def __init__(
        self,
        message: str,
        *,
        raw_output: str | None,
        attempts: int,
        usage: dict[str, int] | None = None,
    ) -> None:
        super().__init__(message)
        self.raw_output = raw_output
        self.attempts = attempts
        self.usage = usage or {}
