"""The message-file tail: the complete lines a Pipes writer appended, in bounded chunks."""

from __future__ import annotations

import os

READ_CHUNK_BYTES = 1 << 20


class LineTail:
    """Reads the complete lines appended to a file, as text chunks of whole lines.

    A partial last line waits for its newline. The launcher forwards the chunks as they are: the
    orchestrator splits and parses the lines, so the per-message cost on the worker is nil.

    Args:
        path: The file to tail (it must exist).
        max_chunk_bytes: About how large a chunk may be; a longer single line goes whole.
    """

    def __init__(self, path: str, max_chunk_bytes: int) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._partial = b""
        self._max = max(1, max_chunk_bytes)

    def read_chunks(self) -> list[bytes]:
        """The complete lines appended since the last call, in chunks of about ``max`` bytes."""
        chunks: list[bytes] = []
        while True:
            data = os.read(self._fd, READ_CHUNK_BYTES)
            if not data:
                return chunks
            more = len(data) == READ_CHUNK_BYTES
            if self._partial:
                data = self._partial + data
            end = data.rfind(b"\n") + 1
            self._partial = data[end:]
            self._split(data, end, chunks)
            if not more:
                return chunks

    def _split(self, data: bytes, end: int, chunks: list[bytes]) -> None:
        start = 0
        while end - start > self._max:
            cut = data.rfind(b"\n", start, start + self._max) + 1
            if cut <= start:  # one line longer than the limit: it goes whole
                cut = data.find(b"\n", start + self._max) + 1
            chunks.append(data[start:cut])
            start = cut
        if end > start:
            chunks.append(data[start:end])

    def read_rest(self) -> list[bytes]:
        """The chunks left at end of stream, including an unterminated last line."""
        chunks = self.read_chunks()
        if self._partial.strip():
            chunks.append(self._partial + b"\n")
        self._partial = b""
        return chunks

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)
