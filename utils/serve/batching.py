"""Dynamic batching: jobs submitted from the event loop are gathered, up to ``max_batch`` of them or until
the first has waited ``max_wait_s``, and handed as one list to ``run_batch`` in a single worker thread,
so the event loop never blocks on the model and the model never runs two batches at once."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Callable, Sequence

LOGGER = logging.getLogger(__name__)


class ServiceStopped(RuntimeError):
    """A job submitted to, or still queued in, a batcher that is not running."""


SHUTTING_DOWN = "the service is shutting down; try again later."


@dataclass
class _Pending:
    job: Any
    future: asyncio.Future
    submitted: float  # loop.time() when it was queued


class DynamicBatcher:
    """Gathers jobs into batches for ``run_batch(jobs) -> results`` (one result per job, in order; an
    Exception as a job's result is raised for that job alone), run in one worker thread. ``on_batch(size)``
    is called on the event loop after each batch that ran.

    No batch can stop the worker: an exception from ``run_batch`` or ``on_batch``, or a result list of the
    wrong length, is answered to every job of that batch (logged), and the next batch runs.

    A batch starts as soon as ``max_batch`` jobs are queued, or ``max_wait_s`` after its first job was
    queued; jobs queued while the worker is busy wait for the next batch, so under load batches fill up
    without waiting. max_batch=1 turns batching off.
    """

    def __init__(
        self,
        run_batch: Callable[[list], Sequence],
        max_batch: int,
        max_wait_s: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(
                f"max_batch ({max_batch}) must be at least 1 and max_wait_s ({max_wait_s}) >= 0."
            )
        self.run_batch, self.max_batch, self.max_wait_s, self.on_batch = (
            run_batch,
            max_batch,
            max_wait_s,
            on_batch,
        )
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._unanswered: set[asyncio.Future] = set()  # queued, being gathered or running
        self._closed = False  # after fail_unanswered(): every job submitted is refused

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="detector")
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._serve())
        self._task.add_done_callback(self._worker_ended)

    async def stop(self) -> None:
        """Fail every unanswered job with ServiceStopped and end the worker once its batch is done."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        self.fail_unanswered()
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, True)

    def fail_unanswered(self) -> None:
        """Answer every job not yet answered, and every job submitted from now on, with ServiceStopped
        (the end of a graceful shutdown's grace period)."""
        self._closed = True
        self._fail_all(SHUTTING_DOWN)

    def _fail_all(self, sentence: str) -> None:
        for future in list(self._unanswered):
            if not future.done():
                future.set_exception(ServiceStopped(sentence))

    def _worker_ended(self, task: asyncio.Task) -> None:
        """The worker ends only when stopped. Should a bug end it otherwise, it is logged, every job left
        is answered (``running`` is then False: /health answers 503), and none waits forever."""
        if task.cancelled() or task.exception() is None:
            return
        LOGGER.error("the batching worker stopped", exc_info=task.exception())
        self._fail_all("the model's worker has stopped; see the server's log.")

    async def submit(self, job: Any) -> Any:
        """Queue one job and wait for its result (or the exception its batch raised)."""
        if self._closed:
            raise ServiceStopped(SHUTTING_DOWN)
        if not self.running:
            raise ServiceStopped("the service is not running; try again later.")
        loop = asyncio.get_running_loop()
        pending = _Pending(job, loop.create_future(), loop.time())
        self._unanswered.add(pending.future)
        pending.future.add_done_callback(self._unanswered.discard)
        self._queue.put_nowait(pending)
        return await pending.future

    async def _gather(self) -> list[_Pending]:
        """The next batch: at least one job, then more until max_batch or the first job's deadline."""
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = batch[0].submitted + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return [pending for pending in batch if not pending.future.done()]  # skip jobs given up on

    async def _serve(self) -> None:
        while True:
            batch = await self._gather()
            if not batch:
                continue
            try:
                await self._run(batch)
            except Exception as error:  # never lose the worker: answer the batch and go on
                LOGGER.exception("a batch of %d jobs failed outside the model", len(batch))
                _answer(batch, [error] * len(batch))

    async def _run(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self.run_batch, [p.job for p in batch])
        except Exception as error:  # every job of the batch gets the error, its caller reports it
            results = [error] * len(batch)
        else:
            if len(results) != len(batch):
                error = RuntimeError(f"the model answered {len(results)} results for a batch of {len(batch)}")
                LOGGER.error("%s; every job of the batch gets this error", error)
                results = [error] * len(batch)
            elif self.on_batch is not None:
                try:
                    self.on_batch(len(batch))
                except Exception:  # a callback's fault is not the batch's: its answers stand
                    LOGGER.exception("on_batch failed")
        _answer(batch, results)


def _answer(batch: list[_Pending], results: Sequence) -> None:
    """Each job's result, or its exception, to the caller still waiting for it."""
    for pending, result in zip(batch, results):
        if pending.future.done():
            continue
        if isinstance(result, Exception):
            pending.future.set_exception(result)
        else:
            pending.future.set_result(result)
