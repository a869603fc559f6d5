"""TFRecord framing, the container of TensorBoard event files, read with its CRC checks.

Each record is `length (u64 LE) | masked crc32c(length) | data | masked crc32c(data)`. A job
killed mid-write leaves a torn last record; a copy gone wrong leaves a bad checksum. Reading
stops at the first record that is not whole and intact and says where and why, so the caller
keeps every record before it (docs/inputs.md).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8  # TFRecord stores each CRC32C rotated right by 15 bits plus this constant
# A longer record is not something a summary writer produces: a garbage length, not a record.
MAX_RECORD_BYTES = 256 * 1024 * 1024
_READ_BUFFER = 4 << 20


@dataclass
class RecordDamage:
    """Why reading stopped before the end of the file."""

    offset: int  # byte offset of the record that could not be read
    records: int  # whole records read before it
    reason: str  # "truncated" (file ends inside the record) or "corrupt" (bad checksum or length)
    detail: str


@dataclass
class RecordReader:
    """Iterate a file's records; after the loop, `damage` says whether (and why) it stopped early."""

    path: Path
    crc32c: Callable[[bytes], int]
    damage: RecordDamage | None = None
    records: int = 0

    def __iter__(self) -> Iterator[bytes]:
        # The hot loop of a million-record file: the file is read in large chunks, records are
        # sliced out of the buffer, and the CRC mask is computed inline (no call per record).
        unpack_header, unpack_footer, crc = _HEADER.unpack_from, _FOOTER.unpack_from, self.crc32c
        delta, mask = _MASK_DELTA, 0xFFFFFFFF
        buffer, pos, offset = b"", 0, 0  # offset: the file position of buffer[0]
        with open(self.path, "rb", buffering=0) as handle:
            while True:
                if len(buffer) - pos < 12:
                    buffer, offset, pos = buffer[pos:] + handle.read(_READ_BUFFER), offset + pos, 0
                    if not buffer:
                        return
                    if len(buffer) < 12:
                        self._stop(offset, "truncated", "the file ends inside a record header")
                        return
                length, length_crc = unpack_header(buffer, pos)
                c = crc(buffer[pos : pos + 8])
                if ((((c >> 15) | (c << 17)) & mask) + delta) & mask != length_crc:
                    self._stop(offset + pos, "corrupt", "record length fails its checksum")
                    return
                if length > MAX_RECORD_BYTES:
                    self._stop(offset + pos, "corrupt", f"record length {length} is implausible")
                    return
                end = pos + 16 + length
                if end > len(buffer):
                    more = handle.read(max(_READ_BUFFER, end - len(buffer)))
                    buffer, offset, end, pos = buffer[pos:] + more, offset + pos, end - pos, 0
                    if end > len(buffer):
                        self._stop(offset, "truncated", "the file ends inside a record")
                        return
                data = buffer[pos + 12 : end - 4]
                c = crc(data)
                if ((((c >> 15) | (c << 17)) & mask) + delta) & mask != unpack_footer(buffer, end - 4)[0]:
                    self._stop(offset + pos, "corrupt", "record data fails its checksum")
                    return
                self.records += 1
                pos = end
                yield data

    def _stop(self, offset: int, reason: str, detail: str) -> None:
        self.damage = RecordDamage(offset, self.records, reason, detail)
