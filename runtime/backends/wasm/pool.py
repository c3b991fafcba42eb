"""Guest calls run in a pool of threads: wasmtime releases the GIL while a guest runs,
so concurrent calls of one model run in parallel, up to the pool's size.

``stream`` runs a call in a pool thread and hands what it writes (its stdout) to the
event loop piece by piece; closing the iterator sets the cancel flag the call checks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["GuestPool"]

T = TypeVar("T")
_DONE = object()


class GuestPool:
    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"wasm-{name}")

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def stream(
        self,
        fn: Callable[[Callable[[bytes], None], threading.Event], T],
        cancel: threading.Event | None = None,
    ) -> AsyncGenerator[bytes | T, None]:
        """Run ``fn(emit, cancel)`` in a pool thread; yields each ``emit``-ed piece, then
        ``fn``'s result as the last item. Exceptions of ``fn`` are raised here. Closing
        the iterator early sets ``cancel``."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = cancel or threading.Event()

        def emit(piece: bytes) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, piece)

        def run() -> None:
            try:
                result: Any = fn(emit, cancel)
            except BaseException as exc:
                result = exc
            loop.call_soon_threadsafe(queue.put_nowait, (_DONE, result))

        future: Future[None] = self._executor.submit(run)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, tuple) and item and item[0] is _DONE:
                    if isinstance(item[1], BaseException):
                        raise item[1]
                    yield item[1]
                    return
                yield item
        finally:
            cancel.set()  # the guest stops at its next host call or deadline tick
            del future

    def close(self) -> None:
        self._executor.shutdown(wait=True)
