"""The outbox file's index: a delivery looks its ids up there instead of reading every line
sent before, and the index follows the file when a crash or a person changed it."""

import json
import sqlite3
from contextlib import closing

from revorch.governance.targets import OutboxFile


def _message(action_id: str) -> dict:
    return {"action_id": action_id, "action_type": "notify_csm", "payload": {}}


def _lines(outbox: OutboxFile) -> list[str]:
    return [json.loads(line)["action_id"] for line in outbox.path.read_text().splitlines()]


def _indexed(outbox: OutboxFile) -> tuple[set[str], int]:
    with closing(sqlite3.connect(outbox.index)) as index:
        ids = {row[0] for row in index.execute("SELECT action_id FROM held")}
        [(covered,)] = index.execute("SELECT bytes FROM covered").fetchall()
    return ids, covered


def test_delivered_ids_are_indexed_and_found_by_the_next_dispatcher(tmp_path):
    path = tmp_path / "outbox" / "actions.jsonl"
    first = OutboxFile(path)
    assert [d.ok for d in first.deliver([_message("a"), _message("b"), _message("a")])] == [
        True
    ] * 3
    assert _lines(first) == ["a", "b"]
    assert _indexed(first) == ({"a", "b"}, path.stat().st_size)

    later = OutboxFile(path)  # another dispatch, another process
    results = later.deliver([_message("b"), _message("c")])
    assert [r.detail.startswith("already in") for r in results] == [True, False]
    assert _lines(later) == ["a", "b", "c"]
    assert _indexed(later) == ({"a", "b", "c"}, path.stat().st_size)


def test_lines_the_index_missed_are_read_from_the_covered_offset(tmp_path):
    path = tmp_path / "actions.jsonl"
    outbox = OutboxFile(path)
    outbox.deliver([_message("a")])
    # A crash between an append and its index commit: the line is in the file only.
    # Also lines a person wrote otherwise: another key order, an id with an escape.
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(_message("x")) + "\n")
        handle.write(json.dumps({"payload": {}, "action_id": "p"}) + "\n")
        handle.write(json.dumps({"action_id": 'q"1'}) + "\n")
    results = OutboxFile(path).deliver([_message(i) for i in ("x", "p", 'q"1', "y")])
    assert [r.detail.startswith("already in") for r in results] == [True, True, True, False]
    assert _lines(outbox) == ["a", "x", "p", 'q"1', "y"]
    assert _indexed(outbox)[0] == {"a", "x", "p", 'q"1', "y"}


def test_a_file_replaced_or_cut_short_is_indexed_again(tmp_path):
    path = tmp_path / "actions.jsonl"
    outbox = OutboxFile(path)
    outbox.deliver([_message("a"), _message("b")])
    # A person archives the file and starts a new one holding one old line.
    path.rename(tmp_path / "archived.jsonl")
    path.write_text(json.dumps(_message("b")) + "\n")
    results = OutboxFile(path).deliver([_message("a"), _message("b")])
    assert [r.detail.startswith("already in") for r in results] == [False, True]
    assert _lines(outbox) == ["b", "a"]
    # Cut short in place: what the index covered is no longer there.
    path.write_text("")
    assert OutboxFile(path).deliver([_message("a")])[0].detail == str(path)
    assert _lines(outbox) == ["a"]
    assert _indexed(outbox) == ({"a"}, path.stat().st_size)
