"""Ordered thread maps over per-thread resources (GDAL dataset handles), for raster work on every core.

A GDAL dataset handle must not be used by two threads at once, but GDAL releases the GIL while it
decodes, warps and encodes: with one handle per thread, N threads keep N cores busy. Handles are
opened by the caller (in its ``rasterio.Env``, whose GDAL options are process-wide) and lent to one
task at a time.
"""

from __future__ import annotations

import os
import queue
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

R = TypeVar("R")
T = TypeVar("T")
U = TypeVar("U")


def cpu_threads() -> int:
    """Threads for one raster job: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def ordered_map(
    fn: Callable[[R, T], U],
    items: Iterable[T],
    resources: list[R],
    ahead: int = 0,
    assign: Callable[[T], int] | None = None,
) -> Iterator[U]:
    """``fn(resource, item)`` for every item on one thread per resource; results in item order.

    ``assign(item)`` pins an item to a resource (so neighbouring blocks share one handle's block
    cache); without it an item goes to whichever resource is free. At most ``ahead`` items
    (default: twice the threads) are in flight, so memory stays bounded when results are
    consumed more slowly than they are made. With one resource it runs inline.
    """
    if len(resources) == 1:
        yield from (fn(resources[0], item) for item in items)
        return
    limit = ahead or 2 * len(resources)
    pools = [ThreadPoolExecutor(1, thread_name_prefix="raster") for _ in resources]
    free: queue.SimpleQueue[int] = queue.SimpleQueue()
    for k in range(len(resources)):
        free.put(k)

    def any_free(item: T) -> U:
        k = free.get()
        try:
            return fn(resources[k], item)
        finally:
            free.put(k)

    pending: deque[Future[U]] = deque()
    try:
        for n, item in enumerate(items):
            if assign is None:
                pending.append(pools[n % len(pools)].submit(any_free, item))
            else:
                k = assign(item)
                pending.append(pools[k].submit(fn, resources[k], item))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # the consumer stopped early or a task failed: do not start what is left
        for fut in pending:
            fut.cancel()
        for pool in pools:
            pool.shutdown(wait=True)
