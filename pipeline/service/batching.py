"""Micro-batching: concurrent requests share one ``Pipeline.route_batch`` call.

A forward pass over eight messages costs less than eight passes over one (about 15% less on the
2-core CPUs without AMX measured here, far less where small passes leave AMX idle), so under load it
pays to route messages together even when they arrive in different requests. Every message a
request wants routed becomes a pending item (message + future) on an asyncio queue. One collector
task takes the first waiting item, then keeps taking items until it has ``max_batch`` of them or
``max_wait_ms`` have passed since the first (0 by default: whatever is waiting goes at once, because
the collector does not take the next batch before the current pass returns, so under load the requests
that arrive during a pass form the next batch without any added wait), and hands the batch to a single
inference thread. When the pipeline returns, each future gets its own outcome and each waiting request
wakes up with its results. The event loop never runs inference, so health checks, metrics and new
requests are served while a batch is being routed.

Backpressure: at most ``max_queue`` messages wait; beyond that ``submit`` raises ``OverloadedError`` at
once (the app answers 503 with Retry-After) rather than letting requests queue into a timeout.
Requests that time out cancel their futures, and the collector drops cancelled items before routing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import HearkenError
from pipeline.heap import HeapTrimmer
from pipeline.schema import Message, TriageResult
from pipeline.service.metrics import ServiceMetrics

if TYPE_CHECKING:  # the service imports batching before it loads any model
    from pipeline.triage import Pipeline

log = logging.getLogger("pipeline.service")

Outcome = TriageResult | HearkenError
RouteBatch = Callable[[Sequence[Message]], list[Outcome]]


class OverloadedError(Exception):
    """More messages are waiting than the service is configured to queue."""


class BatcherStoppedError(Exception):
    """The service is shutting down (or has not started) and routes nothing more."""


class InferenceFailedError(Exception):
    """The pipeline raised instead of returning outcomes: a bug, logged with its traceback."""


@dataclass(slots=True)
class _Pending:
    message: Message
    future: asyncio.Future[Outcome]


class InferenceThread(ThreadPoolExecutor):
    """An executor with exactly one thread: the one that loads the pipeline and runs every pass.

    A type of its own so that the micro-batcher can require one thread by its signature instead of
    inspecting a thread pool's private settings.

    Why load on it too: on these machines, routing on a thread other than the one that built the
    pipeline measured 37-40 ms per 250-token message against 23-25 ms on the loading thread (same
    process, same model, ``torch.get_num_threads()`` 2 in both), so serving loads the model here.
    The likely cause is libgomp, torch's OpenMP: each calling thread gets its own team of worker
    threads, and once a process has more OpenMP threads than CPUs, idle workers stop spinning and
    sleep at once, so every parallel region pays a wake-up. Forcing that with
    ``OMP_WAIT_POLICY=PASSIVE`` on the loading thread gave the same 50 ms as routing from another
    thread, against 30 ms without it, in one noisy run.
    ``torch_threads`` pins torch's intra-op threads on that thread (the setting is per thread).
    """

    def __init__(self, torch_threads: int | None = None) -> None:
        from pipeline.runtime import configure_threads  # imports torch, which loading the model needs anyway

        super().__init__(
            max_workers=1,
            thread_name_prefix="hearken-inference",
            initializer=configure_threads,
            initargs=(torch_threads,),
        )


def load_pipeline_on(inference: InferenceThread, model_dir: Path | None) -> Pipeline:
    """Build the pipeline on ``inference``, the thread that will route with it; blocks until loaded.

    If loading fails, the thread is shut down (nothing will ever run on it) and the error raised.
    """
    from pipeline.triage import Pipeline

    try:
        return inference.submit(Pipeline.from_folder, model_dir).result()
    except BaseException:
        inference.shutdown(wait=False)
        raise


class MicroBatcher:
    """Collects messages from concurrent requests into pipeline calls run on one worker thread."""

    def __init__(
        self,
        route_batch: RouteBatch,
        *,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        metrics: ServiceMetrics | None = None,
        executor: InferenceThread | None = None,
        trim_interval_s: float = 0.0,
    ) -> None:
        """``executor``: the single inference thread to use (and shut down on ``stop``); by default
        one is made on ``start``. Pass the thread that loaded the pipeline: torch ops measured
        1.6x slower on a thread other than the one that loaded the model (see ``InferenceThread``).
        ``trim_interval_s``: give freed heap memory back at most this often (0: never; see
        ``HeapTrimmer``), on the inference thread after a batch's results are delivered.
        """
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be positive and max_wait_ms not negative")
        self._route_batch = route_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._metrics = metrics
        self._queue: asyncio.Queue[_Pending] | None = None
        self._collector: asyncio.Task[None] | None = None
        self._executor: InferenceThread | None = executor
        self._trimmer = HeapTrimmer(trim_interval_s)

    @property
    def running(self) -> bool:
        return self._collector is not None and not self._collector.done()

    @property
    def depth(self) -> int:
        """Messages waiting to be routed (not counting the batch being routed now)."""
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        """Start the collector on the running event loop (call from the app's lifespan)."""
        if self.running:
            return
        self._queue = asyncio.Queue()
        if self._executor is None:
            self._executor = InferenceThread()
        self._collector = asyncio.create_task(self._collect(), name="hearken-micro-batcher")

    async def stop(self) -> None:
        """Stop collecting; anything still queued fails with ``BatcherStoppedError``."""
        collector, self._collector = self._collector, None
        if collector is not None:
            collector.cancel()
            await asyncio.gather(collector, return_exceptions=True)
        if self._queue is not None:
            while not self._queue.empty():
                pending = self._queue.get_nowait()
                if not pending.future.done():
                    pending.future.set_exception(BatcherStoppedError("the service is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._set_depth()

    async def submit(self, messages: Sequence[Message]) -> list[Outcome]:
        """Route messages (possibly together with other requests' messages); outcomes in input order."""
        if not self.running or self._queue is None:
            raise BatcherStoppedError("the router is not running")
        if self._queue.qsize() + len(messages) > self.max_queue:
            raise OverloadedError(
                f"{self._queue.qsize()} messages are already waiting (limit {self.max_queue})"
            )
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Outcome]] = []
        for message in messages:
            future: asyncio.Future[Outcome] = loop.create_future()
            futures.append(future)
            self._queue.put_nowait(_Pending(message, future))
        self._set_depth()
        try:
            # return_exceptions so every future's failure is retrieved (no "never retrieved" warnings).
            gathered = await asyncio.gather(*futures, return_exceptions=True)
        except BaseException:
            # Timed out or client gone: nobody will read the results, so the collector skips them.
            for future in futures:
                future.cancel()
            raise
        outcomes: list[Outcome] = []
        for item in gathered:
            # A HearkenError is an outcome (an unreadable message); anything else failed the request.
            if isinstance(item, BaseException) and not isinstance(item, HearkenError):
                raise item
            outcomes.append(item)
        return outcomes

    async def _collect(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            self._set_depth()
            live = [pending for pending in batch if not pending.future.done()]
            if live:
                await self._dispatch(live)

    async def _dispatch(self, batch: list[_Pending]) -> None:
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        messages = [pending.message for pending in batch]
        started = time.perf_counter()
        try:
            outcomes = await loop.run_in_executor(self._executor, self._route_batch, messages)
            if len(outcomes) != len(messages):
                raise InferenceFailedError(
                    f"the pipeline returned {len(outcomes)} outcomes for {len(messages)} messages"
                )
        except asyncio.CancelledError:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(BatcherStoppedError("the service is shutting down"))
            raise
        except Exception as exc:
            log.exception("the pipeline failed on a batch of %d messages", len(messages))
            failure = (
                exc if isinstance(exc, InferenceFailedError) else InferenceFailedError(type(exc).__name__)
            )
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(failure)
            return
        if self._metrics is not None:
            self._metrics.pipeline_batch_size.observe(len(messages))
            self._metrics.inference_seconds.observe(time.perf_counter() - started)
            self._metrics.observe_results(outcomes)
        for pending, outcome in zip(batch, outcomes, strict=True):
            if not pending.future.done():
                pending.future.set_result(outcome)
        if self._trimmer.due:
            await loop.run_in_executor(self._executor, self._trimmer.trim)

    def _set_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.set(self.depth)
