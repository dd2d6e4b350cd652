"""Tables: validated, sorted, atomic and byte-identical writes."""

from __future__ import annotations

import hashlib
import math

import pyarrow as pa
import pytest

from pipeline.errors import SchemaError, StageInputError
from pipeline.schemas import CHIPS, DECISIONS, PHOTOS, SCHEMAS, read_table, table_from_rows, write_table


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rows_are_sorted_and_output_is_byte_identical_whatever_the_input_order(tmp_path):
    rows = [{"id": str(i), "lat": float(i), "lon": -float(i)} for i in (5, 3, 9, 1)]
    write_table(table_from_rows(rows, PHOTOS), tmp_path / "a.parquet", PHOTOS)
    write_table(table_from_rows(rows[::-1], PHOTOS), tmp_path / "b.parquet", PHOTOS)
    assert _sha(tmp_path / "a.parquet") == _sha(tmp_path / "b.parquet")
    back = read_table(tmp_path / "a.parquet", PHOTOS)
    assert back.column("id").to_pylist() == ["1", "3", "5", "9"]
    assert back.column("owner").null_count == 4


def test_unknown_column_is_rejected():
    with pytest.raises(SchemaError, match="not in the schema"):
        table_from_rows([{"id": "1", "colour": "red"}], CHIPS)


def test_wrong_type_is_rejected():
    with pytest.raises(SchemaError):
        table_from_rows([{"id": "1", "nodata_fraction": "lots"}], CHIPS)


def test_multi_key_sort_for_decisions(tmp_path):
    rows = [
        {"id": "2", "filter": "b", "kept": True, "reason": ""},
        {"id": "1", "filter": "z", "kept": False, "reason": "x"},
        {"id": "2", "filter": "a", "kept": True, "reason": ""},
    ]
    write_table(table_from_rows(rows, DECISIONS), tmp_path / "d.parquet", DECISIONS, sort_by=["id", "filter"])
    t = read_table(tmp_path / "d.parquet", DECISIONS)
    assert list(zip(t["id"].to_pylist(), t["filter"].to_pylist())) == [("1", "z"), ("2", "a"), ("2", "b")]


def test_missing_input_names_the_stage_to_run(tmp_path):
    with pytest.raises(StageInputError, match=r"nope\.parquet does not exist: run `crossview search` first"):
        read_table(tmp_path / "nope.parquet", PHOTOS)


def test_schema_mismatch_on_read_is_reported(tmp_path):
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["1"]}), tmp_path / "x.parquet")
    with pytest.raises(SchemaError):
        read_table(tmp_path / "x.parquet", PHOTOS)


def test_no_temp_files_left_and_nan_survives(tmp_path):
    write_table(table_from_rows([{"id": "1", "lat": math.nan}], PHOTOS), tmp_path / "p.parquet", PHOTOS)
    assert [p.name for p in tmp_path.iterdir()] == ["p.parquet"]
    assert math.isnan(read_table(tmp_path / "p.parquet", PHOTOS)["lat"][0].as_py())


def test_units_in_column_names():
    names = {n for s in SCHEMAS.values() for n in s.names}
    assert {"x_m", "y_m", "gsd_m", "chip_edge_m"} <= names
