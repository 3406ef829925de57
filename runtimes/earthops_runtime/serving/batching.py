"""Micro-batching: chips of concurrent requests gathered into one forward.

``MicroBatcher.predict(x)`` queues ``x`` (``[n, C, H, W]``, split into pieces of at most
``max_batch_size``) and waits for its rows of the output. One task per event loop takes the first
queued piece, then keeps taking pieces until the batch is full or ``max_wait_ms`` has passed since
that first piece arrived, and runs the forward on a worker thread (the event loop keeps answering
health checks and reading requests meanwhile). Batches are strictly serial: the task awaits each
forward before it gathers the next batch, and pieces that arrive during a forward queue up, so under
load the next batch fills from the queue at once. ``max_wait_ms=0``: take only what is already
queued.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


@dataclass
class _Piece:
    x: np.ndarray
    future: asyncio.Future


class MicroBatcher:
    """See the module docstring. ``forward``: ``[B, C, H, W] -> [B, ...]`` (thread-safe enough to
    be called from one worker thread); ``on_batch(size)`` is called for each forward (metrics)."""

    def __init__(self, forward: Callable[[np.ndarray], np.ndarray], *, max_batch_size: int = 32,
                 max_wait_ms: float = 2.0, on_batch: Callable[[int, float], None] | None = None,
                 executor: ThreadPoolExecutor | None = None):
        if max_batch_size < 1:
            raise ValueError(f"max batch size {max_batch_size}: must be >= 1")
        if max_wait_ms < 0:
            raise ValueError(f"max batch wait {max_wait_ms} ms: must be >= 0")
        self.forward = forward
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="earthops-forward")
        self._queue: asyncio.Queue[_Piece] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None

    def _ensure(self) -> asyncio.Queue[_Piece]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop = loop
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._run(self._queue), name="earthops-micro-batcher")
        assert self._queue is not None
        return self._queue

    async def predict(self, x: np.ndarray) -> np.ndarray:
        """The forward's output rows for ``x``, batched with whatever else is queued."""
        queue = self._ensure()
        loop = asyncio.get_running_loop()
        pieces = [_Piece(x[i:i + self.max_batch_size], loop.create_future())
                  for i in range(0, len(x), self.max_batch_size)]
        for p in pieces:
            queue.put_nowait(p)
        results = [await p.future for p in pieces]
        return results[0] if len(results) == 1 else np.concatenate(results)

    async def _run(self, queue: asyncio.Queue[_Piece]) -> None:
        loop = asyncio.get_running_loop()
        carry: _Piece | None = None
        while True:
            first = carry if carry is not None else await queue.get()
            carry = None
            batch = [first]
            size = len(first.x)
            deadline = loop.time() + self.max_wait_s
            while size < self.max_batch_size:
                try:
                    if queue.empty():
                        left = deadline - loop.time()
                        if left <= 0:
                            break
                        piece = await asyncio.wait_for(queue.get(), left)
                    else:
                        piece = queue.get_nowait()
                except TimeoutError:
                    break
                if size + len(piece.x) > self.max_batch_size:
                    carry = piece
                    break
                batch.append(piece)
                size += len(piece.x)
            await self._forward(loop, batch, size)

    async def _forward(self, loop: asyncio.AbstractEventLoop, batch: list[_Piece], size: int) -> None:
        live = [p for p in batch if not p.future.done()]  # a cancelled request's chips are dropped
        if not live:
            return
        x = live[0].x if len(live) == 1 else np.concatenate([p.x for p in live])
        start = loop.time()
        try:
            y = await loop.run_in_executor(self._executor, self.forward, x)
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request
            for p in live:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(len(x), loop.time() - start)
        at = 0
        for p in live:
            n = len(p.x)
            if not p.future.done():
                p.future.set_result(y[at:at + n])
            at += n


__all__ = ["MicroBatcher"]
