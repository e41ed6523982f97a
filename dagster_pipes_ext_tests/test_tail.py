"""The launcher's message-file tail: whole lines, bounded records, linear reading, nothing lost."""

import json
import tracemalloc
from pathlib import Path

import pytest

from dagster_pipes_ext.remote.tail import LineTail
from dagster_pipes_ext.remote.wire import (
    REC_FRAGMENT,
    REC_LAST_FRAGMENT,
    REC_MESSAGES,
    REC_OVERSIZED,
)


class _Reassembler:
    """Turns records back into lines, as the orchestrator's reader does."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.oversized: list[dict] = []
        self._fragments: list[bytes] = []

    def feed(self, records: list) -> None:
        for kind, data, size in records:
            if kind == REC_MESSAGES:
                assert data.endswith("\n") and size == len(data.encode())
                self.lines.extend(line.encode() for line in data.split("\n")[:-1])
            elif kind == REC_FRAGMENT:
                self._fragments.append(data)
            elif kind == REC_LAST_FRAGMENT:
                self.lines.append(b"".join([*self._fragments, data]))
                self._fragments = []
            elif kind == REC_OVERSIZED:
                self._fragments = []
                self.oversized.append(data)


def _read_all(tail: LineTail, out: _Reassembler, max_bytes: int) -> None:
    more = True
    while more:
        records, more = tail.read()
        for _kind, _data, size in records:
            assert size <= max_bytes
        out.feed(records)


@pytest.mark.parametrize("max_bytes", [1, 50, 4096, 1 << 20])
def test_records_are_bounded_and_give_back_every_line(tmp_path: Path, max_bytes: int) -> None:
    """Whole lines are chunked, long ones fragmented, and reassembled they are the input."""
    path = tmp_path / "messages.jsonl"
    path.write_bytes(b"")
    lines = [(b"x" * (i % 97)) + b"-%d" % i for i in range(3000)]
    lines[1234] = b"L" * 200_000  # longer than most limits: it travels in fragments
    tail = LineTail(str(path), max_bytes, 1 << 30)
    out = _Reassembler()
    with open(path, "ab") as f:
        data = b"".join(line + b"\n" for line in lines)
        # Written in uneven pieces that cut lines in the middle; read between the pieces.
        for start in range(0, len(data), 7919):
            f.write(data[start : start + 7919])
            f.flush()
            _read_all(tail, out, max_bytes)
    out.feed(tail.read_rest())
    tail.close()
    assert out.lines == lines
    assert tail.lines == len(lines)


def test_unterminated_last_line_is_delivered_at_the_end(tmp_path: Path) -> None:
    """A last line without its newline waits, and is delivered when the stream ends."""
    path = tmp_path / "messages.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}')
    tail = LineTail(str(path), 1024, 1 << 20)
    assert tail.read() == ([(REC_MESSAGES, '{"a": 1}\n', 9)], False)
    assert tail.read() == ([], False)  # the partial line waits for its newline
    assert tail.read_rest() == [(REC_MESSAGES, '{"b": 2}\n', 9)]
    assert tail.lines == 2
    tail.close()


def test_reading_is_bounded_by_the_budget(tmp_path: Path) -> None:
    """One read takes about one budget of the file and says more is waiting."""
    path = tmp_path / "messages.jsonl"
    line = b"y" * 99
    path.write_bytes((line + b"\n") * 30_000)  # 3 MB
    tail = LineTail(str(path), 128 * 1024, 1 << 20)
    records, more = tail.read(budget_bytes=1 << 20)
    assert more and sum(size for _k, _d, size in records) <= 1 << 20
    out = _Reassembler()
    out.feed(records)
    _read_all(tail, out, 128 * 1024)
    tail.close()
    assert out.lines == [line] * 30_000


def test_a_huge_line_is_read_in_bounded_memory(tmp_path: Path) -> None:
    """A 48 MiB line never sits whole in the tail: peak memory stays near one read budget."""
    path = tmp_path / "messages.jsonl"
    value = "v" * (48 << 20)
    path.write_text(json.dumps({"method": "report_asset_materialization", "params": value}) + "\n")
    tail = LineTail(str(path), 128 * 1024, 1 << 30)
    total = 0
    tracemalloc.start()
    try:
        more = True
        while more:
            records, more = tail.read()
            total += sum(len(data) for _kind, data, _size in records)
            del records
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        tail.close()
    assert total == path.stat().st_size - 1  # every byte but the newline, in fragments
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB while reading a 48 MiB line"


def test_line_over_the_cap_is_reported_not_forwarded(tmp_path: Path) -> None:
    """A line over max_message_bytes becomes one record with its method and size."""
    path = tmp_path / "messages.jsonl"
    big = json.dumps({"__dagster_pipes_version": "0.1", "method": "report_custom_message",
                      "params": {"payload": "z" * 300_000}}).encode()  # fmt: skip
    path.write_bytes(b'{"before": 1}\n' + big + b'\n{"after": 2}\n')
    tail = LineTail(str(path), 4096, 100_000)
    out = _Reassembler()
    _read_all(tail, out, 4096)
    tail.close()
    assert out.lines == [b'{"before": 1}', b'{"after": 2}']
    assert out.oversized == [{"method": "report_custom_message", "bytes": len(big)}]
    assert tail.lines == 3
