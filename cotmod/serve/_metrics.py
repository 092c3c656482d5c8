"""Prometheus metrics of ``cotmod serve`` (``GET /metrics``), in a registry of their own (so
several apps in one process do not collide).

* ``cotmod_serve_requests_total{endpoint,status}`` and ``cotmod_serve_request_seconds{endpoint}``
  (histogram): every HTTP request, by route (not the raw path) and status code;
* ``cotmod_serve_verdicts_total{status}``: verdicts produced (``ok`` / ``error``);
* ``cotmod_serve_decisions_total{policy,action}``: decisions of ok verdicts;
* ``cotmod_serve_tokens_total{kind}``: model tokens (``prompt`` / ``completion``);
* ``cotmod_serve_errors_total{type}``: error responses and error verdicts by error type;
* ``cotmod_serve_cache_hits_total``: policy calls answered from the result cache;
* ``cotmod_serve_rejected_total{reason}``: requests turned away with 429 (``overloaded``);
* ``cotmod_serve_in_flight`` and ``cotmod_serve_queue_depth``: requests being moderated now, and
  requests waiting for a slot.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .._verdict import Verdict

__all__ = ["CONTENT_TYPE_LATEST", "ServeMetrics"]

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServeMetrics:
    """The service's counters, histogram and gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("cotmod_serve_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            "cotmod_serve_request_seconds", "HTTP request latency by endpoint", ["endpoint"], buckets=_BUCKETS, registry=r
        )
        self.verdicts = Counter("cotmod_serve_verdicts", "Verdicts produced, by status", ["status"], registry=r)
        self.decisions = Counter("cotmod_serve_decisions", "Decisions of ok verdicts by policy and action", ["policy", "action"], registry=r)
        self.tokens = Counter("cotmod_serve_tokens", "Model tokens by kind", ["kind"], registry=r)
        self.errors = Counter("cotmod_serve_errors", "Error responses and error verdicts by type", ["type"], registry=r)
        self.cache_hits = Counter("cotmod_serve_cache_hits", "Policy calls answered from the result cache", registry=r)
        self.rejected = Counter("cotmod_serve_rejected", "Requests turned away (429) by reason", ["reason"], registry=r)
        self.in_flight = Gauge("cotmod_serve_in_flight", "Requests being moderated now", registry=r)
        self.queue_depth = Gauge("cotmod_serve_queue_depth", "Requests waiting for a moderation slot", registry=r)
        self._children: dict[tuple[Any, ...], Any] = {}

    # labels() takes a lock and builds a key on every call: the labelled children are looked up
    # once and kept (label sets are few: endpoints x statuses, policies x actions, error types)
    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self._child(self.requests, endpoint, str(status)).inc()
        self._child(self.latency, endpoint).observe(seconds)

    def observe_verdict(self, v: Verdict) -> None:
        self._child(self.verdicts, v.status).inc()
        if v.status == "ok":
            for d in v.decisions:
                self._child(self.decisions, d.policy_id, d.action).inc()
        elif v.error is not None:
            self._child(self.errors, v.error.type).inc()
        self._child(self.tokens, "prompt").inc(v.usage.prompt_tokens)
        self._child(self.tokens, "completion").inc(v.usage.completion_tokens)
        if v.cache_hits:
            self.cache_hits.inc(v.cache_hits)

    def render(self) -> bytes:
        return generate_latest(self.registry)
