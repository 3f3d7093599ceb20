"""PicoQuant PTU files in T2 mode: photon arrival times from a time tagger.

Layout (PicoQuant's "Unified TTTR" format, described by their public demo readers,
PicoQuant-Time-Tagged-File-Format-Demos/PTU): 8 bytes magic ``PQTTTR\\0\\0``, 8 bytes
version, then tags of 48 bytes (32-byte name, int32 index, uint32 type, 8-byte value;
strings, arrays and blobs follow their tag, the value being their length) up to the tag
``Header_End``; then ``TTResult_NumberOfRecords`` little-endian 32-bit records.
``MeasDesc_GlobalResolution`` is the time-tag unit in seconds.

T2 records understood here (``TTResultFormat_TTTRRecType``):

* HydraHarp V2, TimeHarp 260 N/P, MultiHarp/PicoHarp 330 ("generic"): bit 31 special,
  bits 25-30 channel, bits 0-24 time tag. Special with channel 63 = overflow: the time
  tag holds the number of overflows (0 means 1), each 2^25 ticks. Special with channel 0
  = an event on the sync input (channel -1 here); channels 1-15 = markers (skipped).
* HydraHarp V1: the same, but each overflow record is one overflow of 33 552 000 ticks.
* PicoHarp 300: bits 28-31 channel, bits 0-27 time; channel 15 is special, with low
  4 bits 0 an overflow of 210 698 240 ticks, else markers (skipped).

Channel numbers are the record's channel field: 0 is the first detector input (the
instrument software's "channel 1"); the T2 sync input is -1.
"""
from __future__ import annotations

import struct
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exoacq.dls.io import DLSFileError
from exoacq.errors import ExoacqError

MAGIC = b"PQTTTR\0\0"
_TAG = struct.Struct("<32siIQ")   # name, index, type, value (read as unsigned, reinterpreted by type)
TY_EMPTY8, TY_BOOL8, TY_INT8, TY_BITSET64, TY_COLOR8 = 0xFFFF0008, 0x00000008, 0x10000008, 0x11000008, 0x12000008
TY_FLOAT8, TY_DATETIME, TY_FLOAT8_ARRAY = 0x20000008, 0x21000008, 0x2001FFFF
TY_ANSI_STRING, TY_WIDE_STRING, TY_BLOB = 0x4001FFFF, 0x4002FFFF, 0xFFFFFFFF

#: T2 record types: name, decoder family, ticks per overflow.
T2_RECORD_TYPES: dict[int, tuple[str, str, int]] = {
    0x00010203: ("PicoHarp T2", "pt2", 210_698_240),
    0x00010204: ("HydraHarp V1 T2", "ht2v1", 33_552_000),
    0x01010204: ("HydraHarp V2 T2", "ht2", 1 << 25),
    0x00010205: ("TimeHarp 260N T2", "ht2", 1 << 25),
    0x00010206: ("TimeHarp 260P T2", "ht2", 1 << 25),
    0x00010207: ("MultiHarp / PicoHarp 330 T2", "ht2", 1 << 25),
}
T3_RECORD_TYPES = {0x00010303, 0x00010304, 0x01010304, 0x00010305, 0x00010306, 0x00010307}
HYDRAHARP_V2_T2 = 0x01010204
_MAX_TAGS = 100_000


@dataclass
class PhotonRecord:
    """Photon arrival times read from a PTU file.

    ``ticks`` are arrival times in units of ``resolution_s`` (int64, ascending, overflow
    corrected), ``channels`` the detector channel of each (int16, same length)."""

    resolution_s: float
    ticks: np.ndarray
    channels: np.ndarray
    header: dict[str, Any] = field(default_factory=dict)
    record_type: str = ""
    duration_s: float | None = None
    path: Path | None = None

    def channel_ticks(self, channel: int) -> np.ndarray:
        """The arrival times (ticks) of one channel."""
        return self.ticks[self.channels == channel]

    def by_channel(self) -> dict[int, np.ndarray]:
        """Arrival times per channel."""
        return {int(c): self.channel_ticks(int(c)) for c in np.unique(self.channels)}

    @property
    def time_s(self) -> np.ndarray:
        return self.ticks * self.resolution_s


def _error(path: Path, where: str, what: str) -> Exception:
    return DLSFileError(path, what, where=where)


def _read_header(path: Path, data: bytes) -> tuple[dict[str, Any], int]:
    """The tags as ``{name: value}`` and the offset of the first record."""
    if len(data) < 16 or data[:8] != MAGIC:
        what = "empty file" if not data else "not a PicoQuant PTU file (no 'PQTTTR' magic at the start)"
        raise _error(path, "byte 0", what)
    header: dict[str, Any] = {"version": data[8:16].rstrip(b"\0").decode("latin-1")}
    offset = 16
    for _ in range(_MAX_TAGS):
        if offset + _TAG.size > len(data):
            raise _error(path, f"byte {offset}", "header ends before its 'Header_End' tag (file truncated?)")
        raw_name, index, kind, raw = _TAG.unpack_from(data, offset)
        name = raw_name.split(b"\0", 1)[0].decode("latin-1")
        key = f"{name}({index})" if index > -1 else name
        offset += _TAG.size
        if kind in (TY_INT8, TY_BITSET64, TY_COLOR8):
            value: Any = struct.unpack("<q", struct.pack("<Q", raw))[0]
        elif kind == TY_BOOL8:
            value = raw != 0
        elif kind in (TY_FLOAT8, TY_DATETIME):
            value = struct.unpack("<d", struct.pack("<Q", raw))[0]
            if kind == TY_DATETIME:   # days since 1899-12-30
                try:
                    value = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(round((value - 25569) * 86400)))
                except (OverflowError, ValueError, OSError):
                    pass
        elif kind == TY_EMPTY8:
            value = None
        elif kind in (TY_ANSI_STRING, TY_WIDE_STRING, TY_FLOAT8_ARRAY, TY_BLOB):
            if offset + raw > len(data):
                raise _error(path, f"byte {offset}", f"tag '{name}' says {raw} bytes follow, the file ends first")
            blob = data[offset:offset + raw]
            offset += raw
            if kind == TY_ANSI_STRING:
                value = blob.split(b"\0", 1)[0].decode("utf-8", errors="replace")
            elif kind == TY_WIDE_STRING:
                value = blob.decode("utf-16-le", errors="replace").split("\0", 1)[0]
            else:
                value = f"<{raw} bytes>"
        else:
            raise _error(path, f"byte {offset - _TAG.size}", f"tag '{name}' has unknown type 0x{kind:08X}")
        if name == "Header_End":
            return header, offset
        header[key] = value
    raise _error(path, f"byte {offset}", f"no 'Header_End' within {_MAX_TAGS} tags")


def _decode_t2(records: np.ndarray, family: str, wrap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Overflow-corrected ticks, channels and record indices of photon and sync events."""
    rec = records.astype(np.int64)
    if family == "pt2":
        ch = rec >> 28
        tag = rec & 0x0FFFFFFF
        special = ch == 15
        overflows = (special & ((tag & 0xF) == 0)).astype(np.int64)
        event = ~special
        channel = ch
    else:
        special = (rec >> 31) == 1
        ch = (rec >> 25) & 0x3F
        tag = rec & 0x1FFFFFF
        is_overflow = special & (ch == 63)
        count = np.where(tag == 0, 1, tag) if family == "ht2" else np.ones_like(tag)
        overflows = np.where(is_overflow, count, 0)
        event = ~special | (ch == 0)
        channel = np.where(special, -1, ch)
    offset = np.cumsum(overflows * wrap)
    index = np.flatnonzero(event)
    return (offset + tag)[index], channel[index].astype(np.int16), index


def read_ptu(path: str | Path, channel: int | None = None) -> PhotonRecord:
    """Photon arrival times from a T2-mode PTU file: all detector channels (not the sync
    input) merged in time order, or only ``channel`` when given (-1: the sync input)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(1 << 20)
            try:
                header, start = _read_header(path, head)
            except ExoacqError:
                if len(head) == size:
                    raise
                header, start = _read_header(path, head + f.read())   # a header beyond 1 MiB
    except OSError as exc:
        raise _error(path, "open", f"cannot read ({exc.strerror})") from None
    for required in ("TTResultFormat_TTTRRecType", "MeasDesc_GlobalResolution", "TTResult_NumberOfRecords"):
        if required not in header:
            raise _error(path, "header", f"no '{required}' tag")
    kind = int(header["TTResultFormat_TTTRRecType"]) & 0xFFFFFFFF
    if kind in T3_RECORD_TYPES:
        raise _error(path, "header", f"T3-mode records (0x{kind:08X}) are not read: record DLS photons in T2 mode")
    if kind not in T2_RECORD_TYPES:
        raise _error(path, "header", f"unknown record type 0x{kind:08X}")
    name, family, wrap = T2_RECORD_TYPES[kind]
    resolution_s = float(header["MeasDesc_GlobalResolution"])
    if not resolution_s > 0:
        raise _error(path, "header", f"MeasDesc_GlobalResolution is {resolution_s}, not a positive time")
    count = int(header["TTResult_NumberOfRecords"])
    available = (size - start) // 4
    if available < count:
        raise _error(path, f"byte {start + 4 * available}",
                     f"header says {count} records, the file holds {available} (file truncated?)")
    records = np.fromfile(path, dtype="<u4", count=count, offset=start)
    ticks, channels, index = _decode_t2(records, family, wrap)
    if channel is not None:
        keep = channels == channel
    else:
        keep = channels >= 0
    ticks, channels, index = ticks[keep], channels[keep], index[keep]
    if ticks.size > 1 and np.any(ticks[1:] < ticks[:-1]):   # out of order: corrupt, or channels interleaved
        for c in np.unique(channels):
            own = ticks[channels == c]
            back = np.flatnonzero(own[1:] < own[:-1])
            if back.size:
                bad = int(index[channels == c][back[0] + 1])
                raise _error(path, f"record {bad} (byte {start + 4 * bad})",
                             f"channel {int(c)} time goes backwards: corrupt records")
        order = np.argsort(ticks, kind="stable")
        ticks, channels = ticks[order], channels[order]
    acquisition_ms = header.get("MeasDesc_AcquisitionTime")
    duration_s = acquisition_ms * 1e-3 if isinstance(acquisition_ms, (int, float)) and acquisition_ms > 0 else (
        float(ticks[-1]) * resolution_s if ticks.size else None)
    return PhotonRecord(resolution_s=resolution_s, ticks=np.ascontiguousarray(ticks, dtype=np.int64),
                        channels=channels, header=header, record_type=name, duration_s=duration_s, path=path)


def encode_hydraharp_t2(ticks: np.ndarray, channel: int = 0) -> np.ndarray:
    """HydraHarp V2 T2 records of photons on one input, with the overflow records between them."""
    ticks = np.asarray(ticks)
    if ticks.ndim != 1 or (ticks.size and not np.issubdtype(ticks.dtype, np.integer)):
        raise ValueError("ticks must be a 1-D array of integers")
    if not 0 <= channel <= 62:
        raise ValueError(f"channel {channel} is outside 0..62 (HydraHarp T2 records have 6 channel bits, 63 is special)")
    ticks = ticks.astype(np.int64)
    if ticks.size and (ticks[0] < 0 or np.any(np.diff(ticks) < 0)):
        raise ValueError("ticks must be non-negative and ascending")
    wrap, most = 1 << 25, (1 << 25) - 1          # overflows one record can carry
    gaps = np.diff(ticks >> 25, prepend=0)        # overflows due before each photon
    per_gap = -(-gaps // most)                    # overflow records before each photon
    photon_at = np.arange(ticks.size) + np.cumsum(per_gap)
    out = np.empty(ticks.size + int(per_gap.sum()), dtype="<u4")
    out[photon_at] = (channel << 25) | (ticks % wrap)
    owner = np.repeat(np.arange(ticks.size), per_gap)
    nth = np.arange(owner.size) - np.repeat(np.cumsum(per_gap) - per_gap, per_gap)
    last = nth == per_gap[owner] - 1
    counts = np.where(last, gaps[owner] - most * (per_gap[owner] - 1), most)
    overflow_at = np.ones(out.size, dtype=bool)
    overflow_at[photon_at] = False
    out[overflow_at] = (1 << 31) | (63 << 25) | counts
    return out


def _tag(name: str, kind: int, value: Any = 0, index: int = -1) -> bytes:
    if kind == TY_ANSI_STRING:
        text = str(value).encode("utf-8") + b"\0"
        text += b"\0" * (-len(text) % 8)
        return _TAG.pack(name.encode("ascii"), index, kind, len(text)) + text
    raw = struct.pack("<d", float(value)) if kind in (TY_FLOAT8, TY_DATETIME) else struct.pack("<q", int(value))
    return struct.pack("<32siI", name.encode("ascii"), index, kind) + raw


def write_ptu(path: str | Path, ticks: np.ndarray, resolution_s: float, channel: int = 0,
              duration_s: float | None = None, comment: str = "") -> Path:
    """Write photons on one input as a HydraHarp V2 T2 PTU file (readable by PicoQuant's
    software and demo readers). ``ticks``: ascending arrival times in units of ``resolution_s``."""
    if not resolution_s > 0:
        raise ValueError(f"resolution_s must be positive, not {resolution_s}")
    records = encode_hydraharp_t2(ticks, channel)
    ticks = np.asarray(ticks, dtype=np.int64)
    if duration_s is None:
        duration_s = float(ticks[-1]) * resolution_s if ticks.size else 0.0
    tags = [
        _tag("File_GUID", TY_ANSI_STRING, "{%s}" % str(uuid.uuid4()).upper()),
        _tag("File_CreatingTime", TY_DATETIME, time.time() / 86400 + 25569),
        _tag("File_Comment", TY_ANSI_STRING, comment),
        _tag("CreatorSW_Name", TY_ANSI_STRING, "exoacq"),
        _tag("CreatorSW_Version", TY_ANSI_STRING, "1.0"),
        _tag("HW_Type", TY_ANSI_STRING, "HydraHarp"),
        _tag("Measurement_Mode", TY_INT8, 2),
        _tag("Measurement_SubMode", TY_INT8, 0),
        _tag("MeasDesc_AcquisitionTime", TY_INT8, round(duration_s * 1e3)),
        _tag("MeasDesc_Resolution", TY_FLOAT8, resolution_s),
        _tag("MeasDesc_GlobalResolution", TY_FLOAT8, resolution_s),
        _tag("TTResult_SyncRate", TY_INT8, 0),
        _tag("TTResultFormat_TTTRRecType", TY_INT8, HYDRAHARP_V2_T2),
        _tag("TTResultFormat_BitsPerRecord", TY_INT8, 32),
        _tag("TTResult_NumberOfRecords", TY_INT8, records.size),
        _tag("Header_End", TY_EMPTY8, 0),
    ]
    path = Path(path)
    with path.open("wb") as out:
        out.write(MAGIC + b"1.0.00\0\0" + b"".join(tags))
        out.write(records.tobytes())
    return path
