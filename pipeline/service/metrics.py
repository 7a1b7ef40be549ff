"""Prometheus metrics: what an operator needs to see that the service keeps up and routes sanely.

Each app gets its own registry (not the process-global one), so several apps in one test process, or
a service embedded in another program, never collide or double count. Labels are bounded: endpoints
are route templates (unknown paths share one label), tiers come from the v1 contract.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.schema import TriageResult

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ServiceMetrics:
    """The service's counters, histograms and gauges, in a registry of their own."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "hearken_http_requests",
            "HTTP requests by endpoint, method and status code.",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "hearken_http_request_duration_seconds",
            "Time from request start to the end of the response, by endpoint and status code.",
            ["endpoint", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.messages = Counter(
            "hearken_messages_routed",
            "Messages that went through the pipeline, by outcome (ok, or error for unreadable input).",
            ["outcome"],
            registry=self.registry,
        )
        self.tiers = Counter(
            "hearken_routed_tier",
            "Routed messages by tier (unset while the model has no routing policy).",
            ["tier"],
            registry=self.registry,
        )
        self.needs_review = Counter(
            "hearken_needs_human_review",
            "Routed messages flagged for a person to check.",
            registry=self.registry,
        )
        self.request_batch_size = Histogram(
            "hearken_request_batch_size",
            "Messages per /v1/route/batch request.",
            buckets=_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.pipeline_batch_size = Histogram(
            "hearken_pipeline_batch_size",
            "Messages per pipeline call after micro-batching concurrent requests.",
            buckets=_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "hearken_pipeline_batch_duration_seconds",
            "Time of one pipeline call (one micro-batch).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "hearken_queue_depth", "Messages waiting for the micro-batcher.", registry=self.registry
        )
        self.feedback = Counter(
            "hearken_feedback",
            "Agents' corrections stored, by corrected field.",
            ["field"],
            registry=self.registry,
        )
        self.model_info = Gauge(
            "hearken_model_info",
            "Always 1; labels tell which model and precision are served.",
            ["model_version", "precision"],
            registry=self.registry,
        )

    def observe_results(self, results: Iterable[object]) -> None:
        """Count pipeline outcomes (results and in-place errors) and tiers."""
        for result in results:
            if isinstance(result, TriageResult):
                self.messages.labels("ok").inc()
                self.tiers.labels(result.route.tier or "unset").inc()
                if result.route.needs_human_review:
                    self.needs_review.inc()
            else:
                self.messages.labels("error").inc()

    def render(self) -> bytes:
        """The text exposition format Prometheus scrapes."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every HTTP request and its latency, including ones rejected before routing (401, 413)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._known_paths: frozenset[str] | None = None

    def _endpoint(self, scope: Scope) -> str:
        """The route template; for requests refused before routing (401, 413), the path if it is a route."""
        path = getattr(scope.get("route"), "path", None)
        if path:
            return str(path)
        if self._known_paths is None:
            routes = getattr(scope.get("app"), "routes", [])
            self._known_paths = frozenset(str(getattr(route, "path", "")) for route in routes)
        return scope["path"] if scope["path"] in self._known_paths else UNMATCHED

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            endpoint = self._endpoint(scope)
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.metrics.requests.labels(endpoint, method, str(status)).inc()
            self.metrics.latency.labels(endpoint, str(status)).observe(time.perf_counter() - started)
