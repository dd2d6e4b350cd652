"""The one place that decides how heavy per-item work runs: Dask threads locally, or a cluster.

Stages hand :func:`run` a pure per-item function (``process_one(item) -> row``) and a list of
items; this module owns batching, the progress bar and the choice of scheduler. With
``scheduler`` empty the work runs on Dask's local threaded scheduler; with a
``dask.distributed`` address (``tcp://host:8786``) the same tasks run on that cluster.
Results come back in input order, in batches, so memory stays bounded whatever the item count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from tqdm import tqdm

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def _batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _client(address: str):
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - depends on the install
        raise RuntimeError(
            f"scheduler is set to {address!r} but dask.distributed is not installed: pip install 'crossview[dask]'"
        ) from None
    return Client(address)


def run(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    scheduler: str = "",
    workers: int = 2,
    desc: str = "",
    batch_size: int | None = None,
) -> Iterator[R]:
    """Apply ``fn`` to every item through Dask and yield the results in input order."""
    import dask

    items = list(items)
    batch_size = batch_size or max(8, workers * 8)
    bar = tqdm(total=len(items), desc=desc, unit="item", disable=None, leave=False)
    client = _client(scheduler) if scheduler else None
    try:
        for batch in _batches(items, batch_size):
            if client is not None:
                results = client.gather(client.map(fn, list(batch), pure=False))
            elif workers == 1:
                results = [fn(item) for item in batch]
            else:
                tasks = [dask.delayed(fn, pure=False)(item) for item in batch]
                results = dask.compute(*tasks, scheduler="threads", num_workers=workers)
            bar.update(len(batch))
            yield from results
    finally:
        bar.close()
        if client is not None:
            client.close()
