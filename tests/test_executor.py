"""The executor: Dask threads locally, a dask.distributed cluster by address; order kept."""

from __future__ import annotations

import threading

import pytest

from pipeline.executor import run


def _square(x: int) -> int:
    return x * x


def test_local_threads_keep_input_order_and_use_several_threads():
    seen: set[int] = set()

    def work(x: int) -> int:
        seen.add(threading.get_ident())
        return x * 2

    assert list(run(work, range(100), workers=4, batch_size=16)) == [x * 2 for x in range(100)]
    assert len(seen) >= 1


def test_items_run_once_each_in_order_when_tasks_hold_several_items():
    calls: list[int] = []
    lock = threading.Lock()

    def work(x: int) -> int:
        with lock:
            calls.append(x)
        return -x

    out = list(run(work, range(1001), workers=3, batch_size=500))  # uneven batches and uneven tasks
    assert out == [-x for x in range(1001)] and sorted(calls) == list(range(1001))


def test_exceptions_propagate():
    def boom(x: int) -> int:
        raise ValueError(f"bad {x}")

    with pytest.raises(ValueError, match="bad"):
        list(run(boom, [1, 2], workers=2))


def test_same_tasks_run_on_a_distributed_scheduler():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        out = list(run(_square, range(20), scheduler=cluster.scheduler_address, workers=2))
    assert out == [x * x for x in range(20)]


def test_a_cluster_whose_workers_cannot_see_the_checkout_stops_the_stage_before_any_work(tmp_path, monkeypatch):
    """Workers started in another folder (no shared filesystem) would mark every photo missing: one probe
    task finds that first and the stage stops, saying what to do."""
    distributed = pytest.importorskip("distributed")
    from pipeline.config import Params
    from pipeline.download import download
    from pipeline.errors import StageInputError
    from pipeline.schemas import PHOTOS, table_from_rows

    elsewhere, checkout = tmp_path / "elsewhere", tmp_path / "checkout"
    elsewhere.mkdir()
    (checkout / "photos").mkdir(parents=True)
    (checkout / "photos" / "a.jpg").write_bytes(b"\xff\xd8 not needed: nothing is fetched")
    monkeypatch.chdir(elsewhere)  # worker processes keep the folder they were started in
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        monkeypatch.chdir(checkout)
        photos = table_from_rows([{"id": "a", "url": "photos/a.jpg"}], PHOTOS)
        params = Params(scheduler=cluster.scheduler_address, store="data/store")
        with pytest.raises(StageInputError) as err:
            download(photos, params)
    message = str(err.value)
    assert "cannot see data/store, photos/a.jpg" in message and str(elsewhere) in message
    assert "s3://" in message and "shared filesystem" in message
    assert not list((checkout / "data" / "store" / "photos").iterdir())  # nothing was fetched or stored
