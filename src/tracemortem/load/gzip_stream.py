"""Incremental gzip decompression for traces (docs/robustness.md, "Chrome traces").

Why not `gzip.GzipFile`: a member whose CRC check fails raises there after its data was handed
out, so the reader cannot tell "damaged checksum, data whole" from damage; and each new member
copies the rest of its read buffer (128 KiB), so 10⁶ empty members cost minutes. Here every
member of a concatenated gzip is inflated as raw deflate, its CRC and size checked against the
trailer, and its input fed in doubling pieces from 64 bytes, so a tiny member costs what it holds.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

MAGIC = b"\x1f\x8b"  # a gzip member's first two bytes
_FHCRC, _FEXTRA, _FNAME, _FCOMMENT = 2, 4, 8, 16
_FIRST_FEED = 64


class GzipStream:
    """`read()` gives the next piece of decompressed text, b"" at the end; `problem` says why the
    stream ended early or which check failed (the first such problem), "" when none."""

    def __init__(self, file: BinaryIO, read_bytes: int):
        self.file = file
        self.read_bytes = read_bytes
        self.problem = ""
        self._buf = b""
        self._pos = 0
        self._z: zlib._Decompress | None = None
        self._crc = 0
        self._size = 0
        self._feed = _FIRST_FEED
        self._done = False

    @property
    def consumed(self) -> int:
        """Compressed bytes inflated so far (the file is read ahead of this)."""
        return self.file.tell() - (len(self._buf) - self._pos)

    def read(self) -> bytes:
        while not self._done:
            if self._z is None and not self._start_member():
                self._done = True
                break
            out = self._inflate()
            if out:
                return out
        return b""

    def _note(self, problem: str) -> None:
        self.problem = self.problem or problem

    def _available(self, n: int) -> bool:
        """At least `n` unread bytes in the buffer, reading more as needed."""
        while len(self._buf) - self._pos < n:
            more = self.file.read(self.read_bytes)
            if not more:
                return False
            self._buf = self._buf[self._pos :] + more
            self._pos = 0
        return True

    def _zero_terminated(self, offset: int) -> int | None:
        """Length from `offset` (relative to the read position) to just past the next NUL."""
        start = self._pos + offset
        while (end := self._buf.find(b"\x00", start)) < 0:
            have = len(self._buf) - self._pos
            if not self._available(have + 1):
                return None
            start = self._pos + have
        return end + 1 - self._pos

    def _start_member(self) -> bool:
        """Parse a member header; False at the end of the stream (or trailing non-gzip bytes)."""
        if not self._available(10):
            if self._buf[self._pos : self._pos + 2] == MAGIC:
                self._note("gzip stream ends inside a member header")
            return False
        head = self._buf[self._pos : self._pos + 10]
        if head[:2] != MAGIC:
            return False  # end, or trailing padding that is not a gzip member
        if head[2] != 8:
            self._note("gzip member with an unknown compression method")
            return False
        flags, length = head[3], 10
        if flags & _FEXTRA:
            if not self._available(length + 2):
                self._note("gzip stream ends inside a member header")
                return False
            length += 2 + int.from_bytes(self._buf[self._pos + length : self._pos + length + 2], "little")
        for flag in (_FNAME, _FCOMMENT):
            if flags & flag:
                if not self._available(length) or (field := self._zero_terminated(length)) is None:
                    self._note("gzip stream ends inside a member header")
                    return False
                length = field
        length += 2 if flags & _FHCRC else 0
        if not self._available(length):
            self._note("gzip stream ends inside a member header")
            return False
        self._pos += length
        self._z, self._crc, self._size, self._feed = zlib.decompressobj(-zlib.MAX_WBITS), 0, 0, _FIRST_FEED
        return True

    def _inflate(self) -> bytes:
        z = self._z
        assert z is not None
        if not self._available(1):
            self._note("gzip stream ends before its end marker")
            self._done, self._z = True, None
            return z.flush()
        piece = memoryview(self._buf)[self._pos : self._pos + self._feed]  # no copy of the buffer
        try:
            out = z.decompress(piece, self.read_bytes)
        except zlib.error as exc:
            self._note(f"gzip stream is corrupt ({exc})")
            self._done, self._z = True, None
            return b""
        # At the end of the member the bytes after it are in unused_data (and may be in
        # unconsumed_tail as well); before it, the input not taken for lack of output room.
        self._pos += len(piece) - len(z.unused_data if z.eof else z.unconsumed_tail)
        self._feed = min(2 * self._feed, self.read_bytes)
        self._crc = zlib.crc32(out, self._crc)
        self._size += len(out)
        if z.eof:
            self._z = None
            self._check_trailer()
        return out

    def _check_trailer(self) -> None:
        if not self._available(8):
            self._note("gzip member ends without its checksum")
            self._done = True
            return
        crc, size = struct.unpack_from("<II", self._buf, self._pos)
        self._pos += 8
        if crc != self._crc or size != self._size & 0xFFFFFFFF:
            self._note("gzip checksum does not match the data (read in full; it may be damaged)")
