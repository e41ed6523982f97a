"""The launcher's message-file tail: whole lines only, in bounded chunks, nothing lost."""

import os
from pathlib import Path

import pytest

from dagster_pipes_ext.remote.tail import LineTail


def _lines(chunks: list[bytes]) -> list[bytes]:
    return [line for chunk in chunks for line in chunk.split(b"\n") if line]


@pytest.mark.parametrize("max_bytes", [1, 50, 4096, 1 << 20])
def test_chunks_hold_whole_lines_and_respect_the_limit(tmp_path: Path, max_bytes: int) -> None:
    path = tmp_path / "messages.jsonl"
    path.write_bytes(b"")
    lines = [(b"x" * (i % 97)) + b"-%d" % i for i in range(3000)]
    lines[1234] = b"L" * 200_000  # one line longer than most limits: it travels whole
    tail = LineTail(str(path), max_bytes)
    got: list[bytes] = []
    with open(path, "ab") as f:
        data = b"".join(line + b"\n" for line in lines)
        # Written in uneven pieces that cut lines in the middle; read between the pieces.
        for start in range(0, len(data), 7919):
            f.write(data[start : start + 7919])
            f.flush()
            for chunk in tail.read_chunks():
                assert chunk.endswith(b"\n")
                assert len(chunk) <= max_bytes or chunk.count(b"\n") == 1
                got.extend(_lines([chunk]))
    got.extend(_lines(tail.read_rest()))
    tail.close()
    assert got == lines


def test_unterminated_last_line_is_delivered_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "messages.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}')
    tail = LineTail(str(path), 1024)
    assert tail.read_chunks() == [b'{"a": 1}\n']
    assert tail.read_chunks() == []  # the partial line waits for its newline
    assert tail.read_rest() == [b'{"b": 2}\n']
    tail.close()


def test_reads_more_than_one_read_chunk_at_once(tmp_path: Path) -> None:
    path = tmp_path / "messages.jsonl"
    line = b"y" * 99
    path.write_bytes((line + b"\n") * 30_000)  # 3 MB: several os.read calls
    tail = LineTail(str(path), 128 * 1024)
    chunks = tail.read_chunks()
    tail.close()
    assert all(len(c) <= 128 * 1024 for c in chunks)
    assert _lines(chunks) == [line] * 30_000
    assert os.path.getsize(path) == sum(len(c) for c in chunks)
