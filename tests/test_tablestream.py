"""Reading and writing tables a range of ids at a time: the same rows in the chunks, the same bytes out,
and the filter and manifest stages giving byte-identical outputs whatever the chunk size."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline import filter as filter_stage
from pipeline import manifest, schemas, tablestream
from pipeline.errors import InvariantError, SchemaError
from pipeline.schemas import DECISIONS, DOWNLOADS, MANIFEST, PAIRS, PHOTOS, TILES, read_table, write_table
from pipeline.tablestream import Cursor, TableWriter, id_chunks
from tests.test_filter_stage import run_stage, write_inputs
from tests.test_filters import make_tables, tiles_table


@pytest.fixture()
def small_row_groups(monkeypatch):
    """Row groups of 4 rows, so a few dozen rows make several (both writers read the constant at call time)."""
    monkeypatch.setattr(schemas, "ROW_GROUP_ROWS", 4)
    monkeypatch.setattr(tablestream, "ROW_GROUP_ROWS", 4)


def write_in_parts(table: pa.Table, path, schema, sizes) -> None:
    with TableWriter(path, schema) as writer:
        at = 0
        for n in sizes:
            writer.write(table.slice(at, n))
            at += n


@pytest.mark.parametrize("sizes", [[100], [1] * 30, [3, 0, 7, 5, 1, 9, 100]])
@pytest.mark.parametrize("name", ["photos", "pairs"])  # pairs has GeoParquet geometry and a whole-table bbox
def test_the_writer_gives_write_tables_bytes_whatever_the_parts(tmp_path, small_row_groups, name, sizes):
    schema = {"photos": PHOTOS, "pairs": PAIRS}[name]
    table = getattr(make_tables(), name)
    write_table(table, tmp_path / "whole.parquet", schema)
    write_in_parts(read_table(tmp_path / "whole.parquet", schema), tmp_path / "parts.parquet", schema, sizes)
    assert (tmp_path / "parts.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    assert pq.ParquetFile(tmp_path / "parts.parquet").num_row_groups == -(-table.num_rows // 4) > 1


def test_an_empty_table_and_a_failed_write_are_as_write_table_leaves_them(tmp_path):
    write_table(MANIFEST.empty_table(), tmp_path / "whole.parquet", MANIFEST)
    with TableWriter(tmp_path / "parts.parquet", MANIFEST):
        pass
    assert (tmp_path / "parts.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    with pytest.raises(RuntimeError), TableWriter(tmp_path / "failed.parquet", PAIRS) as writer:
        writer.write(make_tables().pairs)
        raise RuntimeError("stopped half way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts.parquet", "whole.parquet"]  # no file, no temp


def test_chunks_hold_every_row_once_in_id_ranges(tmp_path, monkeypatch):
    monkeypatch.setattr(tablestream, "CHUNK_ROWS", 3)  # batches of 3 rows too
    ids = [f"p{k:03d}" for k in range(0, 40, 2)]
    photos = pa.table({c: pa.nulls(len(ids), f.type) if c != "id" else pa.array(ids) for c, f in zip(
        PHOTOS.names, PHOTOS, strict=True)})  # fmt: skip
    write_table(photos, tmp_path / "photos.parquet", PHOTOS)
    rows = [f"p{k:03d}" for k in range(-3, 45)] * 2  # ids before, between and after the photos, twice each
    decisions = pa.table({"id": rows, "filter": ["a"] * 48 + ["b"] * 48, "kept": [True] * 96, "reason": [""] * 96,
                          "score": pa.nulls(96, pa.float64())})  # fmt: skip
    write_table(decisions, tmp_path / "decisions.parquet", DECISIONS, sort_by=["id", "filter"])
    seen, lead, last = [], [], ""
    for head, rest in id_chunks(Cursor(tmp_path / "photos.parquet", PHOTOS),
                                {"d": Cursor(tmp_path / "decisions.parquet", DECISIONS)}, rows=3):  # fmt: skip
        part = rest["d"]["id"].to_pylist()
        top = head["id"].to_pylist()[-1] if head.num_rows else None
        assert all(last < i and (top is None or i <= top) for i in part)
        seen += part
        lead += head["id"].to_pylist()
        last = part[-1] if part else last
    assert lead == ids and seen == sorted(rows)


def test_a_file_not_sorted_by_id_is_a_clear_error(tmp_path):
    photos = make_tables().photos
    pq.write_table(photos.take(pc.array_sort_indices(photos["id"], order="descending")), tmp_path / "photos.parquet")
    with pytest.raises(SchemaError, match=r"photos.parquet is not sorted by id; rerun `crossview search`"):
        list(Cursor(tmp_path / "photos.parquet", PHOTOS).parts())


def stage_outputs(tmp_path, paths, run: str) -> dict[str, bytes]:
    """Run the filter and manifest stages into ``tmp_path/run``; every output file's bytes."""
    out = tmp_path / run
    tables = [a for n in ("photos", "downloads", "pairs", "chips") for a in (f"--{n}", str(paths[n]))]
    run_stage(filter_stage, [*tables, "--out", str(out / "decisions.parquet"), "--funnel", str(out / "funnel.json")],
              paths["params"])  # fmt: skip
    run_stage(manifest, [*tables, "--tiles", str(paths["tiles"]), "--decisions", str(out / "decisions.parquet"),
                         "--out-dir", str(out / "m"), "--card", str(out / "m" / "card.md"), "--metrics",
                         str(out / "counts.json")], paths["params"])  # fmt: skip
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_filter_and_manifest_give_the_same_bytes_in_chunks_of_any_size(tmp_path, monkeypatch, small_row_groups):
    paths = write_inputs(tmp_path)
    paths["tiles"] = tmp_path / "tables" / "tiles.parquet"
    write_table(tiles_table(), paths["tiles"], TILES, sort_by=["tile_id"])
    # three photos far apart in id order share bytes (a CDN placeholder): counted across chunks, all dropped
    downloads = read_table(paths["downloads"], DOWNLOADS)
    shared = pc.is_in(downloads["id"], value_set=pa.array(["p03", "p10", "p16"]))
    write_table(downloads.set_column(2, "sha256", pc.if_else(shared, "cdn", downloads["sha256"])), paths["downloads"],
                DOWNLOADS)  # fmt: skip
    whole = stage_outputs(tmp_path, paths, "whole")
    for rows in (1, 2, 5):
        monkeypatch.setattr(tablestream, "CHUNK_ROWS", rows)
        assert stage_outputs(tmp_path, paths, f"chunks{rows}") == whole
    decisions = read_table(tmp_path / "whole" / "decisions.parquet", DECISIONS).to_pylist()
    placeholders = {d["id"] for d in decisions if d["filter"] == "placeholder_image" and not d["kept"]}
    assert placeholders == {"p03", "p10", "p16"}
    assert len(whole) == 7 and any(d["filter"] == "density" and not d["kept"] for d in decisions)


def test_a_photo_lost_in_a_later_chunk_stops_the_manifest_with_no_file_written(tmp_path, monkeypatch):
    monkeypatch.setattr(tablestream, "CHUNK_ROWS", 2)
    paths = write_inputs(tmp_path)
    paths["tiles"] = tmp_path / "tables" / "tiles.parquet"
    write_table(tiles_table(), paths["tiles"], TILES, sort_by=["tile_id"])
    stage_outputs(tmp_path, paths, "ok")
    decisions = read_table(tmp_path / "ok" / "decisions.parquet", DECISIONS)
    last_dropped = max(decisions.filter(pc.invert(decisions["kept"]))["id"].to_pylist())
    write_table(decisions.filter(pc.not_equal(decisions["id"], last_dropped)), tmp_path / "cut.parquet", DECISIONS,
                sort_by=["id", "filter"])  # fmt: skip
    tables = [a for n in ("photos", "downloads", "pairs", "chips") for a in (f"--{n}", str(paths[n]))]
    out = tmp_path / "cut"
    with pytest.raises(InvariantError, match=f"1 photo\\(s\\) are in no manifest .*: {last_dropped};"):
        run_stage(manifest, [*tables, "--tiles", str(paths["tiles"]), "--decisions", str(tmp_path / "cut.parquet"),
                             "--out-dir", str(out), "--card", str(out / "card.md"), "--metrics",
                             str(out / "counts.json")], paths["params"])  # fmt: skip
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("run_rows", [1, 4, 7, 10_000])  # 10,000: one run, sorted in memory
@pytest.mark.parametrize("name", ["photos", "pairs"])
def test_the_sorting_writer_gives_write_tables_bytes_from_rows_in_any_order(tmp_path, monkeypatch, small_row_groups,
                                                                            name, run_rows):
    """Rows in shuffled parts, spilled in sorted runs of ``run_rows`` and merged 3 ids a chunk: write_table's bytes."""
    monkeypatch.setattr(tablestream, "CHUNK_ROWS", 3)
    monkeypatch.setattr(tablestream, "MERGE_MIN_ROWS", 1)  # each run read a row or so at a time
    schema = {"photos": PHOTOS, "pairs": PAIRS}[name]
    table = getattr(make_tables(), name)
    write_table(table, tmp_path / "whole.parquet", schema)
    shuffled = table.take(pa.array(np_permutation(table.num_rows)))
    spilled = []
    monkeypatch.setattr(tablestream.SortingWriter, "_spill", spy(tablestream.SortingWriter._spill, spilled))
    with tablestream.SortingWriter(tmp_path / "sorted.parquet", schema, run_rows=run_rows) as writer:
        for at in range(0, shuffled.num_rows, 5):
            writer.write(shuffled.slice(at, 5))
    assert (tmp_path / "sorted.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    assert (len(spilled) > 1) == (run_rows < table.num_rows)


def test_a_failed_sorting_write_leaves_no_file_and_no_runs(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with pytest.raises(RuntimeError), tablestream.SortingWriter(tmp_path / "out.parquet", PAIRS, run_rows=2) as writer:
        writer.write(make_tables().pairs)
        raise RuntimeError("stopped half way")
    assert [p.name for p in tmp_path.iterdir()] == ["tmp"] and not any((tmp_path / "tmp").iterdir())


def np_permutation(n: int) -> list[int]:
    import numpy as np

    return np.random.default_rng(7).permutation(n).tolist()


def spy(fn, calls: list):
    def wrapped(self, *args):
        calls.append(1)
        return fn(self, *args)

    return wrapped


@pytest.mark.parametrize(("run_rows", "merge_rows", "block"), [(10**6, 1024, 50), (37, 1, 1), (37, 5, 64), (500, 3, 7)])
def test_the_key_sorter_gives_rows_in_key_order_from_any_order(run_rows, merge_rows, block, monkeypatch):
    """Rows with many equal first keys (and a NaN-free float key), written in random parts: read back in key
    order, every row once, in blocks, in memory or from runs merged a few rows at a time; no run file left."""
    monkeypatch.setattr(tablestream, "MERGE_MIN_ROWS", merge_rows)
    monkeypatch.setattr(tablestream, "KEY_MERGE_ROWS", 4 * merge_rows)
    rng = np.random.default_rng(run_rows)
    n = 1000
    schema = pa.schema([("zone", pa.int32()), ("x", pa.float64()), ("row", pa.int64()), ("id", pa.string())])
    rows = pa.table({"zone": rng.integers(0, 3, n).astype(np.int32), "x": rng.integers(0, 40, n) / 4.0,
                     "row": rng.permutation(n), "id": [f"i{k}" for k in range(n)]}, schema=schema)  # fmt: skip
    with tablestream.KeySorter(schema, ["zone", "x", "row"], run_rows=run_rows) as sorter:
        at = 0
        while at < n:
            size = int(rng.integers(1, 120))
            sorter.write(rows.slice(at, size))
            at += size
        runs, spilled = sorter._tmp.name, len(sorter._runs)
        blocks = list(sorter.blocks(block))
    got = pa.concat_tables(blocks)
    assert got.equals(rows.sort_by([("zone", "ascending"), ("x", "ascending"), ("row", "ascending")]))
    assert len(blocks) > 1
    assert (spilled > 0) == (run_rows < n)
    held = max(4, spilled + 1) * merge_rows  # KEY_MERGE_ROWS over the runs, at least a batch each
    assert max(b.num_rows for b in blocks) <= (block if spilled == 0 else held)
    assert not os.path.exists(runs)
