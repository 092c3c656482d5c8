"""A circuit breaker for an endpoint that keeps failing (persistent 429s, 5xx, broken bodies, hangs).

Without one, an exhausted quota costs every item its full set of transport attempts. The breaker
counts *calls* (not attempts) that ended in a counted failure after all transport retries:
``RateLimitedError`` (429), ``ServerError`` (5xx, including ``MalformedResponseError``) and
``RequestTimeoutError``. States:

* **closed** — calls go through. ``threshold`` consecutive counted failures open the circuit.
  The streak is broken by a success, or by a quiet spell: a failed call that *started* more than
  ``window`` seconds after the previous counted failure starts a new streak (so rare failures
  hours apart never add up, while calls that each take longer than the window — a hanging
  server, long Retry-After waits — still do). Other errors (4xx, auth, connection refused)
  neither count nor break the streak.
* **open** — calls fail at once with :class:`~cotmod.CircuitOpenError` without contacting the
  endpoint, until ``cooldown`` seconds have passed since it opened.
* **half-open** — the next call is the *probe* (one attempt, no transport retries); the others
  keep failing fast while it is in flight. A successful probe closes the circuit; a counted
  failure opens it again for another ``cooldown``; any other outcome (e.g. a 400 for that item,
  or cancellation) lets the next call probe.

``threshold=0`` disables the breaker. Every transition and refusal is counted in
:attr:`CircuitBreaker.stats`. Time comes from an injectable ``clock`` (seconds, monotonic).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .._exceptions import (
    CircuitOpenError,
    ConfigError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    TransportError,
)

__all__ = ["CircuitBreaker", "CircuitState", "CircuitStats", "counts_for_circuit"]

log = logging.getLogger("cotmod")

CircuitState = Literal["closed", "open", "half_open"]

DEFAULT_THRESHOLD = 5
DEFAULT_WINDOW = 60.0
DEFAULT_COOLDOWN = 30.0


def counts_for_circuit(exc: BaseException) -> bool:
    """Whether a call's final error counts towards opening the circuit."""
    return isinstance(exc, (RateLimitedError, ServerError, RequestTimeoutError))


@dataclass(frozen=True)
class CircuitStats:
    """A snapshot of a circuit breaker's state and counters."""

    state: CircuitState
    consecutive_failures: int
    """The current streak of counted failures (see the module docstring)."""
    opened: int
    """How many times the circuit has opened (re-opening after a failed probe included)."""
    rejected: int
    """Calls refused without contacting the endpoint."""
    probes: int
    """Probe calls sent in the half-open state."""
    retry_at: float | None
    """When (on the breaker's clock) the next probe is allowed, while open."""


class CircuitBreaker:
    """Closed / open / half-open breaker over whole calls; see the module docstring."""

    def __init__(
        self,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        window: float = DEFAULT_WINDOW,
        cooldown: float = DEFAULT_COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
        name: str = "endpoint",
    ) -> None:
        if threshold < 0:
            raise ConfigError(f"circuit breaker threshold must be >= 0 (0 disables it), got {threshold}")
        for label, value in (("window", window), ("cooldown", cooldown)):
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"circuit breaker {label} must be a positive number of seconds, got {value}")
        self.threshold = threshold
        self.window = float(window)
        self.cooldown = float(cooldown)
        self.name = name
        self._clock = clock
        self._state: CircuitState = "closed"
        self._streak = 0
        self._last_failure: float | None = None
        self._last_error = ""
        self._last_status: int | None = None
        self._opened_count = 0
        self._failures_when_opened = 0
        self._retry_at: float | None = None
        self._probe_in_flight = False
        self._rejected = 0
        self._probes = 0

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    @property
    def state(self) -> CircuitState:
        return self._state

    @property
    def stats(self) -> CircuitStats:
        return CircuitStats(
            state=self._state,
            consecutive_failures=self._streak,
            opened=self._opened_count,
            rejected=self._rejected,
            probes=self._probes,
            retry_at=self._retry_at if self._state != "closed" else None,
        )

    # -- the call protocol -------------------------------------------------------------------
    def before_call(self) -> bool:
        """Admit a call, or raise :class:`CircuitOpenError`. Returns True when the call is the
        half-open probe (send it once, without transport retries)."""
        if not self.enabled or self._state == "closed":
            return False
        now = self._clock()
        if self._state == "open":
            assert self._retry_at is not None
            if now < self._retry_at:
                self._reject(now)
            self._state = "half_open"
            log.info("%s: circuit half-open; sending one probe request", self.name)
        if self._probe_in_flight:
            self._reject(now)
        self._probe_in_flight = True
        self._probes += 1
        return True

    def check_attempt(self, probe: bool) -> None:
        """Before a transport retry: stop retrying if another call opened the circuit meanwhile."""
        if self.enabled and not probe and self._state != "closed":
            self._reject(self._clock())

    def record_success(self, probe: bool) -> None:
        self._streak = 0
        if probe:
            self._probe_in_flight = False
        if self._state != "closed" and (probe or not self._probe_in_flight):
            log.info("%s: circuit closed (a request succeeded)", self.name)
            self._state = "closed"
            self._retry_at = None

    def now(self) -> float:
        """The breaker's clock (pass a call's start time to :meth:`record_failure`)."""
        return self._clock()

    def record_failure(self, exc: TransportError, probe: bool, started: float | None = None) -> None:
        """A call that ``started`` (breaker clock; default now) ended in an error after its
        transport retries; only counted errors (:func:`counts_for_circuit`) count."""
        if probe:
            self._probe_in_flight = False
        if not self.enabled or not counts_for_circuit(exc):
            return
        now = self._clock()
        started = now if started is None else started
        if self._last_failure is not None and started - self._last_failure > self.window:
            self._streak = 0  # a quiet spell: a new streak
        self._last_error = type(exc).__name__
        self._last_status = exc.status_code
        self._streak += 1
        self._last_failure = now
        if probe or (self._state == "closed" and self._streak >= self.threshold):
            self._open(now)

    def record_abandoned(self, probe: bool) -> None:
        """The call ended without an outcome (cancelled, or a non-transport error)."""
        if probe:
            self._probe_in_flight = False

    # -- internals ---------------------------------------------------------------------------
    def _open(self, now: float) -> None:
        self._state = "open"
        self._opened_count += 1
        self._failures_when_opened = max(self._streak, 1)
        self._retry_at = now + self.cooldown
        log.warning(
            "%s: circuit open after %d consecutive failed requests (last: %s); probing again in %.0f s",
            self.name,
            self._failures_when_opened,
            self._describe_last(),
            self.cooldown,
        )

    def _describe_last(self) -> str:
        status = f" HTTP {self._last_status}" if self._last_status else ""
        return f"{self._last_error}{status}" if self._last_error else "unknown"

    def _reject(self, now: float) -> None:
        self._rejected += 1
        retry_at = self._retry_at if self._retry_at is not None else now
        retry_in = max(retry_at - now, 0.0)
        when = (
            "a probe request is in flight and decides"
            if self._state == "half_open"
            else f"one probe request is allowed in {retry_in:.1f} s"
        )
        raise CircuitOpenError(
            f"{self.name}: circuit open after {self._failures_when_opened} consecutive failed requests "
            f"(last: {self._describe_last()}); not contacting the endpoint: {when}",
            failures=self._failures_when_opened,
            retry_in=retry_in,
            retry_at=retry_at,
            status_code=self._last_status,
        )
