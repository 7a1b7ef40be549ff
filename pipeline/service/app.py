"""The HTTP service: ``create_app(settings, pipeline=None)`` builds the FastAPI app.

The app is a thin shell around ``Pipeline.route_batch`` (there is no second inference path): it checks
who is calling (API keys), what they send (size, length, shape), hands messages to the micro-batcher,
logs each decision, and turns every failure into one JSON error shape with a stable code and a fix.

Order of checks on a request, cheapest and least revealing first: metrics start their clock; the API
key is checked from the headers alone (401/403 before a byte of body is read); the body is read up to
``max_request_bytes`` (413 beyond, before parsing); FastAPI validates the JSON against the contract
(422); the handler checks per-message length and batch size (422); routing waits at most
``route_timeout_s`` (504) in a queue of at most ``max_queue`` messages (503).

The model folder is loaded once, in the lifespan, unless a loaded pipeline is passed in (the CLI
loads it first so that a broken model folder fails with its own message and exit code).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.errors import HearkenError
from pipeline.schema import Message as PipelineMessage
from pipeline.schema import TriageResult
from pipeline.service.auth import API_KEYS_ENV, ApiKeys, load_access
from pipeline.service.batching import (
    BatcherStoppedError,
    InferenceFailedError,
    InferenceThread,
    MicroBatcher,
    Outcome,
    OverloadedError,
    load_pipeline_on,
)
from pipeline.service.contract import (
    BatchRequest,
    BatchResponse,
    ErrorCode,
    ErrorDetail,
    ErrorResponse,
    FailedItem,
    FeedbackIn,
    FeedbackReceipt,
    Health,
    MessageIn,
    Readiness,
    RoutedItem,
)
from pipeline.service.decisions import DecisionLog, StoredFeedback, UnknownDecisionError
from pipeline.service.masking import Masker, MaskingLogFilter
from pipeline.service.metrics import MetricsMiddleware, ServiceMetrics
from pipeline.service.settings import ServiceSettings

if TYPE_CHECKING:
    from pipeline.triage import Pipeline

log = logging.getLogger("pipeline.service")
T = TypeVar("T")

API_PREFIX = "/v1/"
BEARER_CHALLENGE = 'Bearer realm="hearken"'
KEY_FIX = f"send `Authorization: Bearer YOUR_KEY` with a key from the service's key file or ${API_KEYS_ENV}"


class ServerTiming:
    """Where one request's time went, sent back as a ``Server-Timing`` header (W3C Server Timing).

    Why: a helpdesk that sees a slow ticket needs to know whether the time went into routing
    (waiting for the inference thread and the pipeline itself) or into the decision log, or was
    spent outside the service (network, its own client); browsers' developer tools and most
    APM agents show this header without any set-up. Durations are in milliseconds.
    """

    def __init__(self) -> None:
        self.entries: list[tuple[str, float]] = []

    def add(self, name: str, started: float) -> None:
        self.entries.append((name, (time.perf_counter() - started) * 1000.0))

    def header(self) -> dict[str, str]:
        return {"Server-Timing": ", ".join(f"{name};dur={ms:.2f}" for name, ms in self.entries)}


class ApiError(Exception):
    """A failure with an HTTP status, a stable code, and a fix; rendered as ``ErrorResponse``."""

    def __init__(
        self,
        status: int,
        code: ErrorCode,
        message: str,
        *,
        fix: str | None = None,
        headers: dict[str, str] | None = None,
        details: list[dict[str, object]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = ErrorDetail(code=code, message=message, fix=fix, details=details)
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = ErrorResponse(error=self.detail).model_dump(mode="json", exclude_none=True)
        return JSONResponse(body, status_code=self.status, headers=self.headers)


async def _send_error(send: Send, error: ApiError) -> None:
    """Answer from a pure ASGI middleware, before the app has seen the request."""
    body = ErrorResponse(error=error.detail).model_dump_json(exclude_none=True).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AuthMiddleware:
    """Checks the bearer key of ``/v1/`` requests from headers alone, before any body is read."""

    def __init__(self, app: ASGIApp, keys: ApiKeys | None, protect_metrics: bool) -> None:
        self.app = app
        self.keys = keys
        self.protect_metrics = protect_metrics

    def _protected(self, path: str) -> bool:
        return path.startswith(API_PREFIX) or (self.protect_metrics and path == "/metrics")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.keys is not None and self._protected(scope["path"]):
            error = self._check(scope)
            if error is not None:
                await _send_error(send, error)
                return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope) -> ApiError | None:
        assert self.keys is not None
        values = [v for k, v in scope["headers"] if k == b"authorization"]
        scheme, _, token = (
            values[0].decode("latin-1").strip().partition(" ") if len(values) == 1 else ("", "", "")
        )
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            return ApiError(
                401,
                "unauthorized",
                "This endpoint needs an API key and the request has none (or an Authorization header that is "
                "not `Bearer KEY`).",
                fix=KEY_FIX,
                headers={"WWW-Authenticate": BEARER_CHALLENGE},
            )
        if not self.keys.accepts(token):
            return ApiError(
                403,
                "forbidden",
                "The API key is not one this service accepts.",
                fix="check the key for typos, or ask the operator to add it (or its sha256) to the key file",
            )
        return None


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413 before anything parses them.

    The declared Content-Length is checked first; a chunked body is counted as it arrives and the
    request is refused as soon as it passes the limit, so an oversized upload is never buffered whole.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, size: int | None) -> ApiError:
        stated = f"{size:,} bytes" if size is not None else "more bytes"
        return ApiError(
            413,
            "request_too_large",
            f"The request body has {stated} than this service accepts ({self.max_bytes:,} bytes).",
            fix="send fewer messages per batch request, or shorter texts (message bodies, not attachments)",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = [v for k, v in scope["headers"] if k == b"content-length"]
        if declared and declared[0].isdigit() and int(declared[0]) > self.max_bytes:
            await _send_error(send, self._too_large(int(declared[0])))
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _send_error(send, self._too_large(None))
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


@dataclass
class ServiceRuntime:
    """What the lifespan builds and the handlers use; absent until the service is ready."""

    pipeline: Pipeline
    batcher: MicroBatcher
    decision_log: DecisionLog
    db_executor: ThreadPoolExecutor
    model_version: str
    precision: str
    ready: bool = True

    async def in_db_thread(self, call: Callable[..., T], *args: Any) -> T:
        """Run a decision-log call on its own thread (SQLite: one writer, never the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self.db_executor, call, *args)


def runtime_of(request: Request) -> ServiceRuntime:
    """The ready runtime, or 503 while the service starts or stops."""
    runtime: ServiceRuntime | None = request.app.state.runtime
    if runtime is None or not runtime.ready:
        settings: ServiceSettings = request.app.state.settings
        raise ApiError(
            503,
            "not_ready",
            "The service is starting or stopping and routes nothing right now.",
            fix="retry after the Retry-After seconds; /readyz says when it is ready",
            headers={"Retry-After": str(settings.retry_after_s)},
        )
    return runtime


Runtime = Annotated[ServiceRuntime, Depends(runtime_of)]


def _install_log_masking(masker: Masker) -> None:
    service_log = logging.getLogger("pipeline.service")
    for existing in [f for f in service_log.filters if isinstance(f, MaskingLogFilter)]:
        service_log.removeFilter(existing)
    service_log.addFilter(MaskingLogFilter(masker))


def _load_keys(settings: ServiceSettings) -> ApiKeys | None:
    keys = load_access(settings.api_keys_file, settings.insecure_no_auth)
    if keys is None:
        log.warning(
            "!!! SERVING WITHOUT AUTHENTICATION (--insecure-no-auth): anyone who can reach %s:%d can route "
            "messages and write feedback. Use this only on a laptop or a sealed test network. !!!",
            settings.host,
            settings.port,
        )
    return keys


def _version() -> str:
    try:
        return importlib.metadata.version("hearken")
    except importlib.metadata.PackageNotFoundError:
        return "0"


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorResponse,
        "description": "No API key, or an Authorization header that is not Bearer.",
    },
    403: {"model": ErrorResponse, "description": "The API key is not accepted."},
    413: {"model": ErrorResponse, "description": "The request body is larger than max_request_bytes."},
    422: {"model": ErrorResponse, "description": "The request does not match the contract or a limit."},
    503: {
        "model": ErrorResponse,
        "description": "Not ready, overloaded or decision log unavailable; retry later.",
    },
    504: {
        "model": ErrorResponse,
        "description": "Routing did not finish within route_timeout_s; retry later.",
    },
}
_bearer_doc = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key: `Authorization: Bearer KEY`. Checked before the body is read.",
)


def create_app(
    settings: ServiceSettings,
    pipeline: Pipeline | None = None,
    *,
    inference: InferenceThread | None = None,
) -> FastAPI:
    """Build the app; the model folder (if no pipeline is given) and the decision log open in the lifespan.

    ``inference`` is the one-thread executor the pipeline was loaded on (``batching.InferenceThread``);
    the service routes on it. Without it, one is made and the model (if not given) is loaded on it.
    """
    keys = _load_keys(settings)
    masker = Masker(settings.mask)
    _install_log_masking(masker)
    metrics = ServiceMetrics()
    retry_headers = {"Retry-After": str(settings.retry_after_s)}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        executor = inference or InferenceThread(settings.inference_threads)
        loaded = pipeline
        if loaded is None:
            # Built on the thread that will run it (see batching.InferenceThread for why).
            loaded = await asyncio.to_thread(load_pipeline_on, executor, settings.model_dir)
        is_sqlite = make_url(settings.database_url).get_backend_name() == "sqlite"
        db_executor = ThreadPoolExecutor(
            max_workers=1 if is_sqlite else 4, thread_name_prefix="hearken-decisions"
        )
        batcher = MicroBatcher(
            loaded.route_batch,
            max_batch=settings.max_batch,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            metrics=metrics,
            executor=executor,
            trim_interval_s=settings.trim_memory_interval_s,
        )
        decision_log: DecisionLog | None = None
        try:
            decision_log = await loop.run_in_executor(
                db_executor,
                lambda: DecisionLog(settings.database_url, masker=masker, store_text=settings.store_text),
            )
            await batcher.start()
            runtime = ServiceRuntime(
                loaded, batcher, decision_log, db_executor, loaded.model_version, loaded.precision
            )
            metrics.model_info.labels(runtime.model_version, runtime.precision).set(1)
            app.state.runtime = runtime
            log.info(
                "ready: model %s (%s), decision log schema v%d, micro-batches of up to %d within %.1f ms",
                runtime.model_version,
                runtime.precision,
                decision_log.schema_version,
                settings.max_batch,
                settings.max_wait_ms,
            )
            yield
        finally:
            if app.state.runtime is not None:
                app.state.runtime.ready = False  # new requests get 503 while in-flight ones finish
            await batcher.stop()
            if decision_log is not None:
                await loop.run_in_executor(db_executor, decision_log.close)
            db_executor.shutdown(wait=True)
            app.state.runtime = None
            log.info("stopped")

    app = FastAPI(
        title="Hearken",
        version=_version(),
        summary="Reads the whole customer message, finds the actual ask, and routes it with evidence.",
        description=(
            "Send each new ticket to `POST /v1/route` (or many to `POST /v1/route/batch`) and get the v1 "
            "result: asks with offsets, product, intent, signals and the route with reasons. Tell Hearken "
            "when a route was wrong with `POST /v1/feedback`. All `/v1/` endpoints need "
            "`Authorization: Bearer KEY`; `/healthz`, `/readyz` and `/metrics` are open. Every error has "
            'the shape `{"error": {"code", "message", "fix"}}`.'
        ),
        lifespan=lifespan,
        docs_url=None,  # Swagger UI would load its scripts from a CDN; serve the document, not the viewer
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.api_keys = keys
    app.state.runtime = None
    # Added innermost first: the outermost (metrics) sees every request, including refused ones.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(AuthMiddleware, keys=keys, protect_metrics=settings.protect_metrics)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        details: list[dict[str, object]] = [
            {
                "location": ".".join(str(part) for part in error.get("loc", ())),
                "message": str(error.get("msg", "")),
            }
            for error in exc.errors()
        ]
        first = details[0] if details else {"location": "body", "message": "invalid"}
        return ApiError(
            422,
            "invalid_request",
            f"The request does not match the API contract: {first['location']}: {first['message']}.",
            fix="compare the body with the request schema in /openapi.json "
            "(JSON, Content-Type: application/json)",
            details=details,
        ).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes: dict[int, tuple[ErrorCode, str, str]] = {
            404: ("not_found", "There is no endpoint at this path.", "see /openapi.json for the endpoints"),
            405: (
                "method_not_allowed",
                "This endpoint does not accept this HTTP method.",
                "see /openapi.json for the methods each endpoint accepts",
            ),
        }
        if exc.status_code == 400:  # FastAPI's "error parsing the body": not UTF-8, or not decodable at all
            return ApiError(
                422,
                "invalid_request",
                "The request body could not be read as JSON text.",
                fix="send UTF-8 encoded JSON with Content-Type: application/json",
            ).response()
        code, message, fix = codes.get(
            exc.status_code, ("invalid_request", str(exc.detail), "see /openapi.json")
        )
        return ApiError(exc.status_code, code, message, fix=fix, headers=dict(exc.headers or {})).response()

    def check_length(text: str) -> ErrorDetail | None:
        if len(text) <= settings.max_message_chars:
            return None
        return ErrorDetail(
            code="message_too_long",
            message=f"The message has {len(text):,} characters, more than this service's limit of "
            f"{settings.max_message_chars:,}.",
            fix="send only the message body (not attachments or whole mail threads), or ask the operator to "
            "raise --max-message-chars",
        )

    async def route_messages(
        runtime: ServiceRuntime, messages: list[PipelineMessage], timing: ServerTiming
    ) -> list[Outcome]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(settings.route_timeout_s):
                outcomes = await runtime.batcher.submit(messages)
        except TimeoutError as exc:
            raise ApiError(
                504,
                "timeout",
                f"Routing did not finish within {settings.route_timeout_s:g} s.",
                fix="retry after the Retry-After seconds; if it keeps happening, the service needs "
                "more capacity",
                headers=retry_headers,
            ) from exc
        except OverloadedError as exc:
            raise ApiError(
                503,
                "overloaded",
                f"The service is overloaded ({exc}).",
                fix="retry after the Retry-After seconds, or send smaller batches",
                headers=retry_headers,
            ) from exc
        except BatcherStoppedError as exc:
            raise ApiError(
                503,
                "not_ready",
                f"The service is not routing ({exc}).",
                fix="retry shortly",
                headers=retry_headers,
            ) from exc
        except InferenceFailedError as exc:
            raise ApiError(
                500,
                "internal_error",
                "The pipeline failed on this request; this is a bug and has been logged.",
                fix="retry once; if it persists, report it with the time of the request",
            ) from exc
        timing.add("route", started)
        routed = [(m, o) for m, o in zip(messages, outcomes, strict=True) if isinstance(o, TriageResult)]
        started = time.perf_counter()
        try:
            await runtime.in_db_thread(runtime.decision_log.record, routed)
        except SQLAlchemyError as exc:
            log.error("decision log write failed: %s", type(exc).__name__)
            raise ApiError(
                503,
                "decision_log_unavailable",
                "The message was routed but its decision could not be logged, so no result is returned.",
                fix="retry after the Retry-After seconds; operators: check the decision log database",
                headers=retry_headers,
            ) from exc
        timing.add("log", started)
        return outcomes

    def as_detail(error: HearkenError) -> ErrorDetail:
        return ErrorDetail(code="unreadable_message", message=error.message, fix=error.fix)

    async def route_checked(
        runtime: ServiceRuntime, messages: list[PipelineMessage], timing: ServerTiming
    ) -> list[TriageResult | ErrorDetail]:
        """Route the messages within the length limit; every other one is answered by its error.

        Shared by the single and the batch endpoint so that both refuse a too-long message and report
        an unreadable one in exactly the same words; a too-long message never reaches the pipeline.
        """
        answers: list[TriageResult | ErrorDetail | None] = [check_length(m.text) for m in messages]
        accepted = [index for index, answer in enumerate(answers) if answer is None]
        if accepted:
            outcomes = await route_messages(runtime, [messages[i] for i in accepted], timing)
            for index, outcome in zip(accepted, outcomes, strict=True):
                answers[index] = outcome if isinstance(outcome, TriageResult) else as_detail(outcome)
        return [answer for answer in answers if answer is not None]

    v1 = {"dependencies": [Security(_bearer_doc)], "responses": _ERROR_RESPONSES}

    @app.post(
        "/v1/route",
        response_model=TriageResult,
        tags=["routing"],
        summary="Route one message",
        description="Returns the v1 result. A message Hearken cannot read (empty, binary, too long) is a 422 "
        "with code `unreadable_message` or `message_too_long`.",
        **v1,
    )
    async def route(body: MessageIn, runtime: Runtime) -> Response:
        timing = ServerTiming()
        answer = (await route_checked(runtime, [body.to_message()], timing))[0]
        if isinstance(answer, ErrorDetail):
            raise ApiError(422, answer.code, answer.message, fix=answer.fix)
        return Response(answer.model_dump_json(), media_type="application/json", headers=timing.header())

    @app.post(
        "/v1/route/batch",
        response_model=BatchResponse,
        tags=["routing"],
        summary="Route many messages",
        description="One item per message, in order: `status: ok` with the result, or `status: error` "
        "with an error object. One unreadable message does not fail the others.",
        **v1,
    )
    async def route_batch(body: BatchRequest, runtime: Runtime) -> Response:
        count = len(body.messages)
        if count > settings.max_batch_items:
            raise ApiError(
                422,
                "batch_too_large",
                f"The batch has {count} messages, more than this service's limit of "
                f"{settings.max_batch_items}.",
                fix=f"split it into requests of at most {settings.max_batch_items} messages",
            )
        metrics.request_batch_size.observe(count)
        messages = [item.to_message() for item in body.messages]
        timing = ServerTiming()
        answers = await route_checked(runtime, messages, timing)
        items: list[RoutedItem | FailedItem] = [
            RoutedItem(id=answer.id, result=answer)
            if isinstance(answer, TriageResult)
            else FailedItem(id=message.id, error=answer)
            for message, answer in zip(messages, answers, strict=True)
        ]
        response = BatchResponse(model_version=runtime.model_version, items=items)
        return Response(response.model_dump_json(), media_type="application/json", headers=timing.header())

    @app.post(
        "/v1/feedback",
        status_code=201,
        response_model=FeedbackReceipt,
        tags=["feedback"],
        summary="Correct a routed message",
        description="Stores an agent's correction of tier, queue, product or asks against the latest "
        "decision for the message id. 404 when no message with that id was routed.",
        **{
            **v1,
            "responses": {**_ERROR_RESPONSES, 404: {"model": ErrorResponse, "description": "Unknown id."}},
        },
    )
    async def give_feedback(body: FeedbackIn, runtime: Runtime) -> FeedbackReceipt:
        tiers = [tier.name for tier in runtime.pipeline.policy.policy.tiers]
        if body.tier is not None and body.tier not in tiers:
            raise ApiError(
                422,
                "invalid_request",
                f"The request does not match the API contract: body.tier: {body.tier!r} is not a tier of "
                f"the routing policy.",
                fix=f"use one of {', '.join(tiers)}",
            )
        try:
            stored: StoredFeedback = await runtime.in_db_thread(runtime.decision_log.record_feedback, body)
        except UnknownDecisionError as exc:
            raise ApiError(
                404,
                "not_found",
                "No message with this id has been routed by this service.",
                fix="send feedback with the `id` of a result from /v1/route or /v1/route/batch",
            ) from exc
        except SQLAlchemyError as exc:
            log.error("feedback write failed: %s", type(exc).__name__)
            raise ApiError(
                503,
                "decision_log_unavailable",
                "The correction could not be stored.",
                fix="retry after the Retry-After seconds",
                headers=retry_headers,
            ) from exc
        for field in ("tier", "queue", "product", "asks"):
            if getattr(body, field) is not None:
                metrics.feedback.labels(field).inc()
        return FeedbackReceipt(
            feedback_id=stored.feedback_id,
            id=stored.message_id,
            decision_model_version=stored.decision_model_version,
            received_at=stored.received_at,
        )

    @app.get("/healthz", response_model=Health, tags=["operations"], summary="Liveness")
    async def healthz() -> Health:
        return Health()

    @app.get(
        "/readyz",
        response_model=Readiness,
        tags=["operations"],
        summary="Readiness and model version",
        responses={503: {"model": Readiness, "description": "Starting or stopping."}},
    )
    async def readyz(request: Request) -> Response:
        runtime: ServiceRuntime | None = request.app.state.runtime
        if runtime is None or not runtime.ready:
            body = Readiness(status="not_ready")
            return Response(
                body.model_dump_json(), status_code=503, media_type="application/json", headers=retry_headers
            )
        ready = Readiness(status="ready", model_version=runtime.model_version, precision=runtime.precision)
        return Response(ready.model_dump_json(), media_type="application/json")

    metrics_responses: dict[int | str, dict[str, Any]] = {
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus text format.",
        }
    }
    if settings.protect_metrics:
        metrics_responses |= {401: _ERROR_RESPONSES[401], 403: _ERROR_RESPONSES[403]}

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        response_class=Response,
        responses=metrics_responses,
        dependencies=[Security(_bearer_doc)] if settings.protect_metrics else None,
    )
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    return app
