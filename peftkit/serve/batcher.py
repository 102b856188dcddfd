"""Requests that arrive together go through the model together.

    request ──submit(key, job)──▶ queue ──worker: take one, then whatever arrives within
    `window_s` (or is waiting already), up to `max_items` texts──▶ per key: run(jobs) in the
    one model thread ──▶ each request's future gets its own results

Why this small thing and not a library: what it needs is ~50 lines of asyncio (the model runs in
one thread, requests wait on futures), and the serving libraries that batch (Ray Serve, Triton,
TorchServe) bring a server of their own. The window costs a lone request a few ms; under load the
queue fills while the model is busy, so batches form without waiting at all.

A batch that fails is run again request by request: one bad request fails alone.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Job:
    key: tuple                       # jobs with equal keys may share one forward pass
    run: Callable[[list], list]      # run(list of payloads) -> one result per payload
    payload: Any
    size: int                        # texts in it (what max_items counts)
    future: asyncio.Future = field(default=None, repr=False)


class Batcher:
    def __init__(self, window_s: float = 0.005, max_items: int = 64):
        self.window_s, self.max_items = window_s, max_items
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="peftkit-model")
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.batches = 0             # forward groups run: /health reports it

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self.work())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, job: Job):
        job.future = asyncio.get_running_loop().create_future()
        await self.queue.put(job)
        return await job.future

    async def in_model_thread(self, fn, *args):
        """Anything else that touches the model (loading an adapter) waits its turn here."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def work(self) -> None:
        while True:
            batch = await self.gather()
            for jobs in group(batch).values():
                await self.run_group(jobs)

    async def gather(self) -> list[Job]:
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        deadline = loop.time() + self.window_s
        while sum(j.size for j in batch) < self.max_items:
            left = deadline - loop.time()
            try:
                job = self.queue.get_nowait() if left <= 0 else \
                    await asyncio.wait_for(self.queue.get(), left)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            batch.append(job)
        return batch

    async def run_group(self, jobs: list[Job]) -> None:
        jobs = [j for j in jobs if not j.future.done()]  # a client that went away
        if not jobs:
            return
        self.batches += 1
        try:
            results = await self.in_model_thread(jobs[0].run, [j.payload for j in jobs])
        except Exception as exc:  # noqa: BLE001 - isolate the request that caused it
            if len(jobs) == 1:
                settle(jobs[0], exc=exc)
                return
            for job in jobs:
                await self.run_group([job])
            return
        for job, result in zip(jobs, results):
            settle(job, result)


def group(batch: list[Job]) -> dict[tuple, list[Job]]:
    groups: dict[tuple, list[Job]] = {}
    for job in batch:
        groups.setdefault(job.key, []).append(job)
    return groups


def settle(job: Job, result=None, exc: BaseException | None = None) -> None:
    if job.future.done():
        return
    if exc is not None:
        job.future.set_exception(exc)
    else:
        job.future.set_result(result)
