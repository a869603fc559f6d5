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
_MASK_DELTA = 0xA282EAD8
# A longer record is not something a summary writer produces: a garbage length, not a record.
MAX_RECORD_BYTES = 256 * 1024 * 1024
_READ_BUFFER = 1 << 20


def masked_crc(crc: int) -> int:
    """TFRecord stores CRC32C rotated and offset, so that a CRC of CRCs is not trivially zero."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


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
        unpack_header, unpack_footer, crc = _HEADER.unpack, _FOOTER.unpack, self.crc32c
        offset = 0
        with open(self.path, "rb", buffering=_READ_BUFFER) as handle:
            while True:
                header = handle.read(12)
                if not header:
                    return
                if len(header) < 12:
                    self._stop(offset, "truncated", "the file ends inside a record header")
                    return
                length, length_crc = unpack_header(header)
                if masked_crc(crc(header[:8])) != length_crc:
                    self._stop(offset, "corrupt", "record length fails its checksum")
                    return
                if length > MAX_RECORD_BYTES:
                    self._stop(offset, "corrupt", f"record length {length} is implausible")
                    return
                body = handle.read(length + 4)
                if len(body) < length + 4:
                    self._stop(offset, "truncated", "the file ends inside a record")
                    return
                data = body[:length]
                if masked_crc(crc(data)) != unpack_footer(body[length:])[0]:
                    self._stop(offset, "corrupt", "record data fails its checksum")
                    return
                self.records += 1
                offset += 16 + length
                yield data

    def _stop(self, offset: int, reason: str, detail: str) -> None:
        self.damage = RecordDamage(offset, self.records, reason, detail)
