"""The verdicts table: append-only, latest per id wins, history kept, safe with concurrent curators."""

from __future__ import annotations

import csv
import multiprocessing
import threading
from datetime import datetime
from pathlib import Path

import pytest

from pipeline.errors import CatalogError
from pipeline.review.verdict_table import VerdictError, VerdictTable
from pipeline.verdicts import COLUMNS, VERDICTS

HEADER = ",".join(COLUMNS) + "\n"


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_append_creates_the_file_keeps_history_and_latest_wins(tmp_path):
    table = VerdictTable(tmp_path / "review" / "verdicts.csv")
    assert table.latest() == {} and table.rows() == []
    table.append(["1", "2"], "drop_indoor", "alice")
    table.append(["1"], "keep", "bob", note="door open, street visible")
    assert table.path.read_text().startswith(HEADER)
    assert [(r["id"], r["verdict"], r["curator"]) for r in _rows(table.path)] == [
        ("1", "drop_indoor", "alice"),
        ("2", "drop_indoor", "alice"),
        ("1", "keep", "bob"),
    ]
    latest = table.latest()
    assert latest["1"].verdict == "keep" and latest["1"].note == "door open, street visible"
    assert latest["2"].verdict == "drop_indoor"
    assert [r.verdict for r in table.history("1")] == ["drop_indoor", "keep"]
    ts = datetime.fromisoformat(latest["1"].timestamp)
    assert ts.utcoffset().total_seconds() == 0


def test_unknown_verdicts_and_ids_are_rejected_and_nothing_is_written(tmp_path):
    table = VerdictTable(tmp_path / "verdicts.csv")
    with pytest.raises(VerdictError, match="unknown verdict 'drop'.*keep, drop_indoor"):
        table.append(["1"], "drop", "alice")
    with pytest.raises(VerdictError, match=r"unknown photo id\(s\) '9'.*nothing was saved"):
        table.append(["1", "9"], "keep", "alice", known={"1", "2"})
    with pytest.raises(VerdictError, match="no photo ids"):
        table.append([], "keep", "alice")
    assert not table.path.exists()
    assert isinstance(VerdictError("x"), ValueError)


def test_notes_stay_on_one_line_and_the_filter_stage_reads_the_same_latest(tmp_path):
    from pipeline.verdicts import latest_verdicts

    table = VerdictTable(tmp_path / "verdicts.csv")
    table.append(["7"], "drop_irrelevant", "alice", note='a "close-up",\nof food')
    table.append(["8"], "keep", "alice")
    table.append(["7"], "drop_wrong_location", "bob")
    assert len(table.path.read_text().splitlines()) == 4
    assert table.history("7")[0].note == 'a "close-up", of food'
    theirs = latest_verdicts(table.path)
    assert {i: v.verdict for i, v in theirs.items()} == {i: r.verdict for i, r in table.latest().items()}


def test_retract_removes_exactly_the_named_rows(tmp_path):
    table = VerdictTable(tmp_path / "verdicts.csv")
    first = table.append(["1"], "keep", "alice")[0]
    second = table.append(["1"], "drop_indoor", "alice")[0]
    assert table.latest()["1"].verdict == "drop_indoor"
    assert table.retract([second.key(), ("1", "1999-01-01T00:00:00Z", "alice")]) == [second]
    assert table.latest()["1"] == first
    table.retract([first.key()])
    assert table.path.read_text() == HEADER and table.latest() == {}


def test_a_hand_edited_file_without_final_newline_still_appends_cleanly(tmp_path):
    path = tmp_path / "verdicts.csv"
    path.write_text(HEADER + "5,keep,carol,2026-01-01T00:00:00Z,")
    table = VerdictTable(path)
    table.append(["6"], "drop_indoor", "alice")
    assert [r["id"] for r in _rows(path)] == ["5", "6"]


def test_a_malformed_file_is_reported_with_its_line(tmp_path):
    path = tmp_path / "verdicts.csv"
    path.write_text(HEADER + "5,keep,carol,2026-01-01T00:00:00Z,\n6,perhaps,carol,2026-01-01T00:00:00Z,\n")
    with pytest.raises(CatalogError, match="line 3: unknown verdict 'perhaps'"):
        VerdictTable(path).latest()
    path.write_text("id,verdict\n")
    with pytest.raises(CatalogError, match="header lacks curator, timestamp, note"):
        VerdictTable(path).rows()


def _curator(path: str, name: str, verdict: str, n: int, go, retract_every: int = 0) -> None:
    table = VerdictTable(path)
    go.wait(60)  # both curators start saving together
    for k in range(n):
        row = table.append([f"id{k:03d}"], verdict, name, note=f"{name} {k}")[0]
        if retract_every and k % retract_every == 0:
            table.retract([row.key()])


def _check_log(path: Path, expected: int) -> None:
    rows = _rows(path)
    assert len(rows) == expected
    stamps = [datetime.fromisoformat(r["timestamp"]) for r in rows]
    assert stamps == sorted(stamps), "timestamps are taken inside the lock, so file order is time order"
    last = {}
    for r in rows:
        last[r["id"]] = r["verdict"]
    assert {i: v.verdict for i, v in VerdictTable(path).latest().items()} == last


def test_two_processes_saving_200_verdicts_each_lose_nothing(tmp_path):
    path = tmp_path / "verdicts.csv"
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    procs = [
        ctx.Process(target=_curator, args=(str(path), name, v, 200, go))
        for name, v in (("alice", "keep"), ("bob", "drop_indoor"))
    ]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    _check_log(path, 400)
    assert {r["curator"] for r in _rows(path)} == {"alice", "bob"}
    assert sorted(r["note"] for r in _rows(path)) == sorted(f"{n} {k}" for n in ("alice", "bob") for k in range(200))


def test_two_threads_saving_and_undoing_at_once_lose_nothing(tmp_path):
    path = tmp_path / "verdicts.csv"
    go = threading.Event()
    threads = [
        threading.Thread(target=_curator, args=(str(path), "alice", "keep", 200, go)),
        threading.Thread(target=_curator, args=(str(path), "bob", "drop_irrelevant", 200, go, 4)),
    ]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join()
    _check_log(path, 200 + 150)  # bob undid every fourth of his 200
    assert set(VERDICTS) >= {r["verdict"] for r in _rows(path)}
