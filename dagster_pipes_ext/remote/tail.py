"""The message-file tail: the lines a Pipes writer appended, as bounded records.

Reading is linear in the file's size and holds at most about one chunk in memory, whatever the
length of a line: lines up to ``max_chunk_bytes`` travel whole, several to a chunk; a longer line
travels as fragments; a line over ``max_message_bytes`` is not forwarded at all (the reader is
told its method and size, and drops the fragments already sent).
"""

from __future__ import annotations

import os
import re
from typing import Any

from dagster_pipes_ext.remote.wire import (
    REC_FRAGMENT,
    REC_LAST_FRAGMENT,
    REC_MESSAGES,
    REC_OVERSIZED,
)

READ_CHUNK_BYTES = 1 << 20
# Where the method of an oversized message is looked for (dagster-pipes writes it first).
HEAD_BYTES = 4096
_METHOD = re.compile(rb'"method"\s*:\s*"([^"\\]{1,200})"')

Record = tuple[str, Any, int]  # (kind, data, size)


class LineTail:
    """Reads the lines appended to a file and turns them into records.

    Args:
        path: The file to tail (it must exist).
        max_chunk_bytes: About how large one record may be.
        max_message_bytes: The longest line forwarded.

    Attributes:
        lines: Complete lines seen so far (forwarded or oversized).
    """

    def __init__(self, path: str, max_chunk_bytes: int, max_message_bytes: int) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._max = max(1, max_chunk_bytes)
        self._cap = max_message_bytes
        # The line in progress: its unsent start, how long it is so far, its first bytes.
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._line_len = 0
        self._head = b""
        self.lines = 0

    def read(self, budget_bytes: int = READ_CHUNK_BYTES) -> tuple[list[Record], bool]:
        """Records for the complete lines appended since the last call.

        Reads at most about ``budget_bytes`` (so memory stays bounded when the file is far
        ahead); returns the records and whether more data may be waiting.
        """
        records: list[Record] = []
        total = 0
        while total < budget_bytes:
            data = os.read(self._fd, min(READ_CHUNK_BYTES, budget_bytes - total))
            if not data:
                return records, False
            total += len(data)
            self._feed(data, records)
        return records, True

    def read_rest(self) -> list[Record]:
        """Everything left at end of stream, including an unterminated last line.

        Read the backlog with :meth:`read` first: this reads to the end in one call.
        """
        records: list[Record] = []
        more = True
        while more:
            got, more = self.read()
            records.extend(got)
        if self._line_len > self._pending_len or b"".join(self._pending).strip():
            self._end_line(b"", records)  # (a whitespace-only rest is no message)
        self._pending, self._pending_len, self._line_len, self._head = [], 0, 0, b""
        return records

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)

    # -- splitting ----------------------------------------------------------------------------

    def _feed(self, data: bytes, records: list[Record]) -> None:
        start = 0
        if self._line_len:  # finish the line in progress first
            newline = data.find(b"\n")
            if newline < 0:
                self._grow(data, records)
                return
            self._end_line(data[:newline], records)
            start = newline + 1
        end = data.rfind(b"\n", start) + 1
        if end > start:
            self._whole_lines(data, start, end, records)
        if end < len(data):
            self._grow(data[max(end, start) :], records)

    def _whole_lines(self, data: bytes, start: int, end: int, records: list[Record]) -> None:
        """Complete lines ``data[start:end]``: chunks of whole lines, long ones on their own."""
        while end - start > self._max:
            cut = data.rfind(b"\n", start, start + self._max) + 1
            if cut <= start:  # one line longer than a chunk
                newline = data.find(b"\n", start)
                self._grow(data[start:newline], records)
                self._end_line(b"", records)
                start = newline + 1
                continue
            self._add_chunk(data[start:cut], records)
            start = cut
        if end > start:
            self._add_chunk(data[start:end], records)

    def _add_chunk(self, chunk: bytes, records: list[Record]) -> None:
        self.lines += chunk.count(b"\n")
        records.append((REC_MESSAGES, chunk.decode("utf-8", errors="replace"), len(chunk)))

    def _grow(self, piece: bytes, records: list[Record]) -> None:
        """Add to the line in progress; send fragments once it is longer than a chunk."""
        if not piece:
            return
        if len(self._head) < HEAD_BYTES:
            self._head += piece[: HEAD_BYTES - len(self._head)]
        self._line_len += len(piece)
        if self._line_len > self._cap:
            self._pending, self._pending_len = [], 0  # not forwarded: only its size counts
            return
        self._pending.append(piece)
        self._pending_len += len(piece)
        if self._pending_len >= self._max:
            pending = b"".join(self._pending)
            self._pending, self._pending_len = [], 0
            for i in range(0, len(pending), self._max):
                fragment = pending[i : i + self._max]
                records.append((REC_FRAGMENT, fragment, len(fragment)))

    def _end_line(self, last: bytes, records: list[Record]) -> None:
        """The line in progress ends with ``last`` (its newline not included)."""
        self._grow(last, records)
        self.lines += 1
        if self._line_len > self._cap:
            match = _METHOD.search(self._head)
            method = match.group(1).decode("utf-8", errors="replace") if match else None
            records.append((REC_OVERSIZED, {"method": method, "bytes": self._line_len}, 64))
        elif self._line_len <= self._pending_len:  # never fragmented: a whole short line
            line = b"".join(self._pending) + b"\n"
            records.append((REC_MESSAGES, line.decode("utf-8", errors="replace"), len(line)))
        else:
            rest = b"".join(self._pending)
            records.append((REC_LAST_FRAGMENT, rest, len(rest)))
        self._pending, self._pending_len, self._line_len, self._head = [], 0, 0, b""
