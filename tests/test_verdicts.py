"""The verdicts CSV format: one parser for the filter stage, the relevance stage and the review page."""

from __future__ import annotations

import pytest

from pipeline.errors import CatalogError
from pipeline.review.verdict_table import VerdictTable
from pipeline.verdicts import COLUMNS, Verdict, format_rows, latest, latest_verdicts, parse, read

HEADER = ",".join(COLUMNS) + "\n"


def test_rows_are_trimmed_and_blank_lines_skipped():
    text = HEADER + " p1 , keep , ann ,2026-01-01T00:00:00Z, fine \n\n,,,,\np2,drop_indoor,bob,2026-01-02T00:00:00,\n"
    assert parse(text) == [
        Verdict("p1", "keep", "ann", "2026-01-01T00:00:00Z", "fine"),
        Verdict("p2", "drop_indoor", "bob", "2026-01-02T00:00:00", ""),
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (",keep,a,2026-01-01T00:00:00Z,\n", r"v\.csv line 2: empty id"),
        ("p1,perhaps,a,2026-01-01T00:00:00Z,\n", r"line 2: unknown verdict 'perhaps'"),
        ("p1,keep,a,yesterday,\n", r"line 2: timestamp 'yesterday' is not ISO 8601"),
        ("p1,keep,a\n", r"line 2: expected 5 fields"),
    ],
)
def test_a_bad_row_names_its_line(body, message):
    with pytest.raises(CatalogError, match=message):
        parse(HEADER + body, "v.csv")


def test_the_review_page_rejects_an_empty_id_like_the_filter_stage(tmp_path):
    path = tmp_path / "verdicts.csv"
    path.write_text(HEADER + ",keep,a,2026-01-01T00:00:00Z,\n")
    with pytest.raises(CatalogError, match="line 2: empty id"):
        VerdictTable(path).rows()
    with pytest.raises(CatalogError, match="line 2: empty id"):
        latest_verdicts(path)


def test_latest_is_by_timestamp_then_by_position_with_naive_times_as_utc():
    rows = parse(
        HEADER
        + "p1,keep,a,2026-01-02T00:00:00Z,\n"
        + "p1,drop_indoor,b,2026-01-01T23:00:00-02:00,\n"  # 2026-01-02T01:00Z: later
        + "p2,keep,a,2026-01-01T00:00:00,\n"  # naive: UTC
        + "p2,drop_irrelevant,b,2026-01-01T00:00:00Z,\n"  # the same instant: the later line wins
    )
    assert {i: v.verdict for i, v in latest(rows).items()} == {"p1": "drop_indoor", "p2": "drop_irrelevant"}


def test_an_empty_or_missing_file_has_no_verdicts_and_rows_round_trip(tmp_path):
    assert parse("") == [] and read(tmp_path / "none.csv") == []
    rows = [Verdict("p1", "keep", "ann", "2026-01-01T00:00:00Z", "a, quoted \"note\"")]
    assert parse(format_rows(rows, header=True)) == rows
