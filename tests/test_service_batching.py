"""Micro-batching: concurrent requests share pipeline calls, inference never blocks the event loop."""

from __future__ import annotations

import asyncio
import platform
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.errors import HearkenError
from pipeline.heap import HeapTrimmer
from pipeline.schema import Message, TriageResult
from pipeline.service.app import create_app
from pipeline.service.auth import API_KEYS_ENV
from pipeline.service.batching import (
    BatcherStoppedError,
    InferenceFailedError,
    InferenceThread,
    MicroBatcher,
    OverloadedError,
)
from pipeline.service.settings import ServiceSettings

KEY = "batch-key-61d0c7f2a9e84b35"
AUTH = {"Authorization": f"Bearer {KEY}"}


class SpyPipeline:
    """Wraps a real pipeline; records every route_batch call (size, thread) and can be made slow."""

    def __init__(self, inner: Any, delay_s: float = 0.0) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.model_version = inner.model_version
        self.precision = inner.precision
        self.calls: list[list[str]] = []
        self.threads: set[str] = set()

    def route_batch(self, messages: Sequence[Message]) -> list[TriageResult | HearkenError]:
        self.calls.append([m.id for m in messages])
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        return self.inner.route_batch(messages)


def _app(tmp_path: Path, pipeline: Any, **overrides: Any):  # type: ignore[no-untyped-def]
    settings = ServiceSettings(database_url=f"sqlite:///{tmp_path}/decisions.db", **overrides)
    return create_app(settings, pipeline)


async def _with_app(app: Any, scenario: Any) -> Any:
    """Run a scenario against the app in this event loop, with its lifespan started and stopped."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://hearken.test", headers=AUTH
        ) as client:
            return await scenario(client)


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEYS_ENV, KEY)


def test_concurrent_requests_are_routed_in_one_pipeline_call(tmp_path: Path, tiny_pipeline) -> None:
    spy = SpyPipeline(tiny_pipeline)
    app = _app(tmp_path, spy, max_batch=8, max_wait_ms=500.0)

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        requests = [
            client.post("/v1/route", json={"id": f"c-{i}", "text": f"Refund order {i} please."})
            for i in range(8)
        ]
        return await asyncio.gather(*requests)

    started = time.perf_counter()
    responses = asyncio.run(_with_app(app, scenario))
    assert time.perf_counter() - started < 5.0  # a full batch goes at once, it does not wait out max_wait_ms
    assert [r.status_code for r in responses] == [200] * 8
    assert [r.json()["id"] for r in responses] == [f"c-{i}" for i in range(8)]  # each request gets its own
    assert len(spy.calls) == 1 and sorted(spy.calls[0]) == sorted(f"c-{i}" for i in range(8))
    assert spy.threads == {"hearken-inference_0"}  # never the event loop's thread


def test_batch_requests_are_split_into_micro_batches(tmp_path: Path, tiny_pipeline) -> None:
    spy = SpyPipeline(tiny_pipeline)
    app = _app(tmp_path, spy, max_batch=8, max_wait_ms=50.0)

    async def scenario(client: httpx.AsyncClient) -> httpx.Response:
        messages = [{"id": f"s-{i}", "text": f"Close account {i}."} for i in range(20)]
        return await client.post("/v1/route/batch", json={"messages": messages})

    response = asyncio.run(_with_app(app, scenario))
    assert response.status_code == 200
    assert [item["id"] for item in response.json()["items"]] == [f"s-{i}" for i in range(20)]
    assert [len(call) for call in spy.calls] == [8, 8, 4]


def test_metrics_show_the_micro_batch_sizes(tmp_path: Path, tiny_pipeline) -> None:
    app = _app(tmp_path, SpyPipeline(tiny_pipeline), max_batch=4, max_wait_ms=500.0)

    async def scenario(client: httpx.AsyncClient) -> str:
        await asyncio.gather(*[client.post("/v1/route", json={"text": f"Question {i}?"}) for i in range(4)])
        return (await client.get("/metrics")).text

    metrics = asyncio.run(_with_app(app, scenario))
    assert (
        "hearken_pipeline_batch_size_count 1.0" in metrics
        and "hearken_pipeline_batch_size_sum 4.0" in metrics
    )


def test_inference_does_not_block_the_event_loop(tmp_path: Path, tiny_pipeline) -> None:
    spy = SpyPipeline(tiny_pipeline, delay_s=1.0)
    app = _app(tmp_path, spy, max_wait_ms=0.0)

    async def scenario(client: httpx.AsyncClient) -> tuple[float, float, int]:
        started = time.perf_counter()
        routing = asyncio.create_task(client.post("/v1/route", json={"text": "A slow one, please?"}))
        while not spy.calls:  # wait until the pipeline is busy
            await asyncio.sleep(0.01)
        health = await client.get("/healthz")
        health_done = time.perf_counter() - started
        response = await routing
        return health_done, time.perf_counter() - started, health.status_code + response.status_code

    health_done, routing_done, statuses = asyncio.run(_with_app(app, scenario))
    assert statuses == 400
    assert routing_done >= 1.0 and health_done < 0.6


def test_overload_is_503_with_retry_after(tmp_path: Path, tiny_pipeline) -> None:
    spy = SpyPipeline(tiny_pipeline, delay_s=0.6)
    app = _app(tmp_path, spy, max_wait_ms=0.0, max_queue=2, max_batch_items=2, retry_after_s=4)

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        first = asyncio.create_task(client.post("/v1/route/batch", json={"messages": [{"text": "one?"}] * 2}))
        while not spy.calls:  # first batch is being routed, the queue is empty again
            await asyncio.sleep(0.01)
        second = asyncio.create_task(
            client.post("/v1/route/batch", json={"messages": [{"text": "two?"}] * 2})
        )
        await asyncio.sleep(0.1)  # second batch is now waiting in the queue (2 of 2)
        third = await client.post("/v1/route", json={"text": "three?"})
        return [await first, await second, third]

    first, second, third = asyncio.run(_with_app(app, scenario))
    assert first.status_code == 200 and second.status_code == 200
    assert third.status_code == 503 and third.json()["error"]["code"] == "overloaded"
    assert third.headers["Retry-After"] == "4"


# ----------------------------------------------------------------------------- the batcher on its own
def _fake_route_batch(calls: list[list[str]], delay_s: float = 0.0, fail_first: bool = False):  # type: ignore[no-untyped-def]
    def route_batch(messages: Sequence[Message]) -> list[Any]:
        calls.append([m.id for m in messages])
        time.sleep(delay_s)
        if fail_first and len(calls) == 1:
            raise RuntimeError("model exploded")
        return [f"routed:{m.id}" for m in messages]

    return route_batch


def test_timed_out_requests_are_not_routed() -> None:
    calls: list[list[str]] = []

    async def scenario() -> None:
        batcher = MicroBatcher(
            _fake_route_batch(calls, delay_s=0.3), max_batch=4, max_wait_ms=0, max_queue=10
        )
        await batcher.start()
        busy = asyncio.create_task(batcher.submit([Message(id="busy", text="x")]))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await batcher.submit([Message(id="late", text="x")])
        assert await busy == ["routed:busy"]
        assert await batcher.submit([Message(id="after", text="x")]) == ["routed:after"]
        await batcher.stop()

    asyncio.run(scenario())
    assert calls == [["busy"], ["after"]]  # "late" was dropped before it reached the pipeline


def test_a_failing_batch_fails_its_requests_and_the_batcher_carries_on() -> None:
    calls: list[list[str]] = []

    async def scenario() -> None:
        batcher = MicroBatcher(
            _fake_route_batch(calls, fail_first=True), max_batch=4, max_wait_ms=50, max_queue=10
        )
        await batcher.start()
        results = await asyncio.gather(
            batcher.submit([Message(id="a", text="x")]),
            batcher.submit([Message(id="b", text="x")]),
            return_exceptions=True,
        )
        assert all(isinstance(r, InferenceFailedError) for r in results)
        assert await batcher.submit([Message(id="c", text="x")]) == ["routed:c"]
        await batcher.stop()

    asyncio.run(scenario())
    assert calls == [["a", "b"], ["c"]]


def test_overload_and_stop() -> None:
    calls: list[list[str]] = []

    async def scenario() -> None:
        batcher = MicroBatcher(_fake_route_batch(calls, delay_s=0.2), max_batch=1, max_wait_ms=0, max_queue=2)
        with pytest.raises(BatcherStoppedError):
            await batcher.submit([Message(text="not started")])
        await batcher.start()
        with pytest.raises(OverloadedError):
            await batcher.submit([Message(text=str(i)) for i in range(3)])
        first = asyncio.create_task(batcher.submit([Message(id="first", text="x")]))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(batcher.submit([Message(id="q1", text="x"), Message(id="q2", text="x")]))
        await asyncio.sleep(0.01)
        assert batcher.depth == 2
        await batcher.stop()
        for request in (first, queued):  # in flight or waiting: both are told the service stopped
            with pytest.raises(BatcherStoppedError):
                await request

    asyncio.run(scenario())
    assert ["q1"] not in calls and ["q2"] not in calls


def test_heap_is_trimmed_on_the_inference_thread_between_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    trims: list[str] = []

    async def scenario() -> None:
        batcher = MicroBatcher(
            _fake_route_batch(calls), max_batch=4, max_wait_ms=0, max_queue=10, trim_interval_s=0.05
        )
        record = lambda pad: trims.append(threading.current_thread().name)  # noqa: E731
        monkeypatch.setattr(batcher._trimmer, "_trim", record)
        await batcher.start()
        assert await batcher.submit([Message(id="a", text="x")]) == ["routed:a"]
        assert trims == []  # not due yet: the interval runs from start
        await asyncio.sleep(0.06)
        assert await batcher.submit([Message(id="b", text="x")]) == ["routed:b"]
        await asyncio.sleep(0.01)  # the trim runs after the results are delivered
        assert await batcher.submit([Message(id="c", text="x")]) == ["routed:c"]
        await batcher.stop()

    asyncio.run(scenario())
    assert len(trims) == 1 and trims[0].startswith("hearken-inference")


def test_every_batch_runs_on_the_one_inference_thread_given_with_its_torch_threads() -> None:
    """The batcher routes on the thread it is given (the one the pipeline was loaded on), always
    the same one, with torch's intra-op threads pinned there."""
    import torch

    seen: list[tuple[int, int]] = []

    def route_batch(messages: Sequence[Message]) -> list[Any]:
        seen.append((threading.get_ident(), torch.get_num_threads()))
        return [f"routed:{m.id}" for m in messages]

    thread = InferenceThread(torch_threads=1)
    loader = thread.submit(threading.get_ident).result()

    async def scenario() -> None:
        batcher = MicroBatcher(route_batch, max_batch=2, max_wait_ms=0, max_queue=10, executor=thread)
        await batcher.start()
        for name in "abc":
            assert await batcher.submit([Message(id=name, text="x")]) == [f"routed:{name}"]
        await batcher.stop()

    asyncio.run(scenario())
    assert seen == [(loader, 1)] * 3
    with pytest.raises(RuntimeError, match="shutdown"):  # stop() shut the given thread down
        thread.submit(threading.get_ident)


def test_heap_trimmer_finds_malloc_trim_on_glibc_and_never_trims_when_disabled() -> None:
    disabled = HeapTrimmer(0.0)
    disabled._last -= 3600
    assert disabled._trim is None and not disabled.due
    trimmer = HeapTrimmer(60.0)
    assert not trimmer.due
    trimmer._last -= 61
    assert trimmer.due == (platform.libc_ver()[0] != "glibc" or trimmer._trim is not None)
    if platform.libc_ver()[0] == "glibc":  # CI runs on glibc: the real C function is found and called
        assert trimmer._trim is not None
        trimmer.trim()
        assert not trimmer.due
