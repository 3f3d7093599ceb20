"""Read FCS 2.0/3.0/3.1 files and write FCS 3.1 (Flow Cytometry Standard, ISAC).

Reading checks the file against the standard before trusting it (Spidlen et al. 2010,
"Data File Standard for Flow Cytometry, Version FCS 3.1", Cytometry A 77:97):

- HEADER (bytes 0-57) gives the TEXT and DATA offsets; for FCS 3.x the TEXT keywords
  $BEGINDATA/$ENDDATA give them again. When the two disagree we use the one whose length
  equals $TOT x bytes per event and that does not overlap TEXT, and say so in a warning;
  when neither or both fit, the file is refused. Events are never read from a guessed offset.
- A DATA segment one byte longer than $TOT x bytes per event (ENDDATA written as the first
  byte after the data: a known BD LSRII quirk) is read with a warning.
- Integer data are masked to the bits needed for $PnR (FCS 3.1, $PnB / $PnR: "if $PnR is not a
  power of 2, the next power of 2 shall be used"); flowio does the masking, we check the counts.
- Values are converted to linear units as FlowKit does: log-amplified integer parameters
  ($PnE = f1,f2 with f1 > 0) become f2 x 10^(f1 x value / $PnR), linear parameters are divided
  by $PnG, and the "Time" parameter is multiplied by $TIMESTEP (seconds per tick).

The DATA segment is decoded by flowio (FlowKit's reader). The TEXT segment is parsed here
too, because flowio lower-cases keys and removes every "$" (also from values): the
``keywords`` we return keep the keys (upper-case) and values exactly as in the file.
"""
from __future__ import annotations

import math
import re
import warnings
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import flowio
import numpy as np
import pandas as pd

from exoacq.errors import ExoacqError

HEADER_BYTES = 58
SUPPORTED_VERSIONS = ("2.0", "3.0", "3.1")
# Keywords write_fcs sets itself (from the events): a caller may not override them.
_STRUCTURAL = re.compile(r"^\$(BEGINANALYSIS|BEGINDATA|BEGINSTEXT|BYTEORD|DATATYPE|ENDANALYSIS|ENDDATA|ENDSTEXT|"
                         r"MODE|NEXTDATA|PAR|TOT|VOL|TIMESTEP|P\d+[BENGR]|P\d+CALIBRATION)$")


@dataclass
class FCSData:
    """One FCS data set: the events in linear units and the TEXT keywords as in the file."""
    events: pd.DataFrame                 # columns = $PnN names; uncompensated, linear (see module docstring)
    keywords: dict[str, str]             # TEXT keywords, upper-case keys with "$" as in the file
    version: str                         # "2.0", "3.0" or "3.1"
    path: str
    warnings: list[str] = field(default_factory=list)
    volume_nl: float | None = None       # $VOL: nL by the standard (some vendors write uL; check the value)
    timestep_s: float | None = None      # $TIMESTEP: seconds per tick of the Time parameter
    spillover: pd.DataFrame | None = None  # square, index and columns = detector $PnN names


def _fail(path, message: str) -> ExoacqError:
    return ExoacqError(f"{Path(path).name}: {message}", code="bad_fcs")


def parse_text_segment(raw: bytes) -> dict[str, str]:
    """Keyword/value pairs of a TEXT segment (FCS 3.1 section 3.2.9).

    The first byte is the delimiter; a doubled delimiter inside a key or value stands for the
    delimiter itself (values are never empty). Keys are returned upper-case.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    if not text:
        raise ValueError("TEXT segment is empty")
    delim, placeholder = text[0], "\x00"
    body = text[1:].replace(delim * 2, placeholder)     # empty values are forbidden: "//" is an escape
    if body.endswith(delim):
        body = body[:-1]
    parts = [p.replace(placeholder, delim) for p in body.split(delim)]
    if len(parts) % 2:
        parts = parts[:-1]   # trailing garbage after the last pair (padding): ignored
    return {parts[i].strip().upper(): parts[i + 1] for i in range(0, len(parts), 2)}


def _int_keyword(path, keywords: dict[str, str], key: str) -> int:
    try:
        return int(keywords[key].strip())
    except KeyError:
        raise _fail(path, f"required keyword {key} is missing") from None
    except ValueError:
        raise _fail(path, f"{key} is not an integer: {keywords[key]!r}") from None


def _float_keyword(keywords, key, warnings_out, what) -> float | None:
    if key not in keywords or not keywords[key].strip():
        return None
    try:
        value = float(keywords[key])
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        warnings_out.append(f"{key} is not a positive number ({keywords[key]!r}): {what}")
        return None
    return value


def parse_spillover(text: str, parameters: list[str]) -> pd.DataFrame:
    """$SPILLOVER (FCS 3.1) / $SPILL / SPILL: "n,name_1,...,name_n,s_11,s_12,...,s_nn".

    Row i holds the fraction of fluorochrome i's signal seen in each detector (the spillover
    matrix S, rows = sources, columns = detectors, diagonal 1). Raises ValueError when malformed.
    """
    items = [s.strip() for s in text.split(",")]
    n = int(items[0])
    if n < 1 or len(items) != 1 + n + n * n:
        raise ValueError(f"expected {1 + n + n * n} comma-separated items for n = {n}, found {len(items)}")
    names = items[1:1 + n]
    unknown = [name for name in names if name not in parameters]
    if unknown:
        raise ValueError(f"names not among the $PnN parameters: {', '.join(unknown)}")
    matrix = np.array([float(v) for v in items[1 + n:]]).reshape(n, n)
    return pd.DataFrame(matrix, index=names, columns=names)


def _data_segment(path, version, header, keywords, file_size, bytes_per_event, n_events, warnings_out):
    """Choose the DATA offsets; return (use_header_offsets, off_by_one)."""
    expected = n_events * bytes_per_event
    h_start, h_stop = header["data_start"], header["data_stop"]
    text_stop = header["text_stop"]

    def fits(start, stop):   # "exact", "plus_one" or None
        if start <= text_stop or stop >= file_size or stop < start:
            return None
        length = stop - start + 1
        return "exact" if length == expected else "plus_one" if length == expected + 1 else None

    use_header = True
    start, stop = h_start, h_stop
    if version != "2.0" and "$BEGINDATA" in keywords and "$ENDDATA" in keywords:
        t_start = _int_keyword(path, keywords, "$BEGINDATA")
        t_stop = _int_keyword(path, keywords, "$ENDDATA")
        large = h_start == 0 and h_stop == 0 and t_stop > 99_999_999   # HEADER holds 0s beyond 8 digits
        if large or (t_start, t_stop) == (h_start, h_stop):
            use_header, start, stop = False, t_start, t_stop
        else:
            ok_header, ok_text = fits(h_start, h_stop), fits(t_start, t_stop)
            what = (f"HEADER says DATA is bytes {h_start}-{h_stop}, TEXT ($BEGINDATA/$ENDDATA) says "
                    f"{t_start}-{t_stop}")
            # an exact length is the proof; a length one byte long only counts when nothing is exact
            for quality in ("exact", "plus_one"):
                if (ok_header == quality) != (ok_text == quality):
                    use_header = ok_header == quality
                    break
                if ok_header == quality:   # both
                    raise _fail(path, f"{what}; both lengths match $TOT x bytes per event: cannot tell which is right")
            else:
                raise _fail(path, f"{what}; neither length matches $TOT x bytes per event ({n_events} x "
                                  f"{bytes_per_event} = {expected}): cannot tell which is right")
            start, stop = (h_start, h_stop) if use_header else (t_start, t_stop)
            warnings_out.append(f"{what}; used {'HEADER' if use_header else 'TEXT'}, the only one whose length fits "
                                f"$TOT x bytes per event ({expected} bytes)")
    if stop >= file_size:
        raise _fail(path, f"DATA segment ends at byte {stop} but the file has {file_size} bytes (truncated?)")
    fit = fits(start, stop)
    if fit is None:
        raise _fail(path, f"DATA segment {start}-{stop} holds {stop - start + 1} bytes, but $TOT x bytes per event "
                          f"= {n_events} x {bytes_per_event} = {expected}")
    if fit == "plus_one":
        warnings_out.append(f"DATA segment is 1 byte longer than $TOT x bytes per event ($ENDDATA points one byte "
                            f"past the data, a known LSRII quirk): read {n_events} events from byte {start}")
    return use_header, fit == "plus_one"


def read_fcs(path) -> FCSData:
    """Read the first data set of an FCS 2.0/3.0/3.1 file, or raise a one-line ExoacqError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _fail(path, f"cannot read file ({exc.strerror or exc})") from None
    if len(raw) < HEADER_BYTES or not raw.startswith(b"FCS"):
        raise _fail(path, "not an FCS file (no 'FCSx.y' HEADER)")
    version = raw[3:6].decode("ascii", "replace")
    if version not in SUPPORTED_VERSIONS:
        raise _fail(path, f"unsupported FCS version {version!r} (2.0, 3.0, 3.1 are read)")
    try:
        offsets = [int(raw[a:a + 8].strip() or 0) for a in (10, 18, 26, 34)]
    except ValueError:
        raise _fail(path, "HEADER offsets are not integers") from None
    header = dict(zip(("text_start", "text_stop", "data_start", "data_stop"), offsets))
    if not HEADER_BYTES <= header["text_start"] < header["text_stop"] < len(raw):
        raise _fail(path, f"TEXT segment {header['text_start']}-{header['text_stop']} is outside the "
                          f"{len(raw)}-byte file (truncated?)")
    try:
        keywords = parse_text_segment(raw[header["text_start"]:header["text_stop"] + 1])
    except ValueError as exc:
        raise _fail(path, f"TEXT segment unreadable: {exc}") from None
    notes: list[str] = []

    n_par = _int_keyword(path, keywords, "$PAR")
    n_events = _int_keyword(path, keywords, "$TOT")
    datatype = keywords.get("$DATATYPE", "").strip().upper()
    if datatype not in ("I", "F", "D"):
        raise _fail(path, f"$DATATYPE {datatype!r} is not supported (I, F or D)")
    if keywords.get("$MODE", "L").strip().upper() != "L":
        raise _fail(path, f"$MODE {keywords['$MODE']!r}: only list mode (L) data are supported")
    names = []
    widths = []
    for i in range(1, n_par + 1):
        if f"$P{i}N" not in keywords:
            raise _fail(path, f"required keyword $P{i}N is missing")
        names.append(keywords[f"$P{i}N"].strip())
        widths.append(_int_keyword(path, keywords, f"$P{i}B"))
    if len(set(names)) != len(names):
        raise _fail(path, f"duplicate parameter names in $PnN: {names}")
    if datatype == "I" and any(w not in (8, 16, 32) for w in widths):
        raise _fail(path, f"integer widths $PnB {sorted(set(widths))}: only 8, 16 and 32 bits are supported")
    if datatype in "FD" and any(w != (32 if datatype == "F" else 64) for w in widths):
        raise _fail(path, f"$DATATYPE {datatype} needs $PnB = {32 if datatype == 'F' else 64} for every parameter")
    for i in range(1, n_par + 1):   # $PnR is required; integer data are masked with it
        if f"$P{i}R" not in keywords:
            raise _fail(path, f"required keyword $P{i}R is missing")
        if datatype == "I":
            _int_keyword(path, keywords, f"$P{i}R")
        else:
            try:
                float(keywords[f"$P{i}R"])
            except ValueError:
                raise _fail(path, f"$P{i}R is not a number: {keywords[f'$P{i}R']!r}") from None
    if "$BYTEORD" not in keywords:
        raise _fail(path, "required keyword $BYTEORD is missing")
    order = [part.strip() for part in keywords["$BYTEORD"].split(",")]
    ascending = [str(i) for i in range(1, len(order) + 1)]
    if order not in (ascending, ascending[::-1]):
        raise _fail(path, f"$BYTEORD {keywords['$BYTEORD']!r}: only little-endian (1,2,3,4) or big-endian "
                          "(4,3,2,1) byte orders are read")
    nextdata = keywords.get("$NEXTDATA", "0").strip()
    if nextdata not in ("", "0") and nextdata.lstrip("0"):
        notes.append(f"file holds more than one data set ($NEXTDATA = {nextdata}); read the first")

    if n_events == 0:
        start, stop = header["data_start"], header["data_stop"]
        if "$BEGINDATA" in keywords and "$ENDDATA" in keywords and not (start or stop):
            start, stop = _int_keyword(path, keywords, "$BEGINDATA"), _int_keyword(path, keywords, "$ENDDATA")
        if stop > start > header["text_stop"] and stop - start + 1 >= sum(widths) // 8:
            raise _fail(path, f"$TOT = 0, but the DATA segment ({start}-{stop}) holds {stop - start + 1} bytes: "
                              "$TOT is damaged")
        notes.append("$TOT = 0: the file holds no events")
        return FCSData(events=pd.DataFrame({n: np.zeros(0) for n in names}), keywords=keywords, version=version,
                       path=str(path), warnings=notes, volume_nl=None, timestep_s=None, spillover=None)
    use_header, off_by_one = _data_segment(path, version, header, keywords, len(raw),
                                           sum(widths) // 8, n_events, notes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # flowio's off-by-one warning is replaced by ours
            flow = flowio.FlowData(str(path), ignore_offset_error=off_by_one, ignore_offset_discrepancy=True,
                                   use_header_offsets=use_header, nextdata_offset=0)
            stored = flow.as_array(preprocess=False)
    except Exception as exc:  # flowio raises FCSParsingError, ValueError, struct.error, ...
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _fail(path, f"DATA segment unreadable ({message})") from None
    if stored.shape != (n_events, n_par):
        raise _fail(path, f"read {stored.shape[0]} x {stored.shape[1]} values, $TOT x $PAR = {n_events} x {n_par}")

    timestep_s = _float_keyword(keywords, "$TIMESTEP", notes, "timestep_s set to None, Time left in ticks")
    volume_nl = _float_keyword(keywords, "$VOL", notes, "volume unknown")
    events = _linear_events(stored, keywords, names, datatype, timestep_s, notes)
    spillover = None
    for key in ("$SPILLOVER", "$SPILL", "SPILL", "SPILLOVER"):
        if key in keywords:
            try:
                spillover = parse_spillover(keywords[key], names)
            except ValueError as exc:
                notes.append(f"{key} unusable ({exc}); events not compensated")
            break
    return FCSData(events=events, keywords=keywords, version=version, path=str(path), warnings=notes,
                   volume_nl=volume_nl, timestep_s=timestep_s, spillover=spillover)


def _linear_events(stored, keywords, names, datatype, timestep_s, notes) -> pd.DataFrame:
    """Stored values -> linear values ($PnE log decoding, $PnG gain, Time x $TIMESTEP)."""
    values = np.array(stored, dtype=np.float64)
    for i, name in enumerate(names, start=1):
        column = values[:, i - 1]
        if name.lower() == "time":
            if timestep_s is not None:
                column *= timestep_s
            continue
        try:
            decades, log0 = (float(x) for x in keywords.get(f"$P{i}E", "0,0").split(","))
        except ValueError:
            notes.append(f"$P{i}E of {name} unreadable ({keywords[f'$P{i}E']!r}): treated as linear")
            decades, log0 = 0.0, 0.0
        if decades > 0:
            if datatype != "I":
                notes.append(f"$P{i}E = {keywords[f'$P{i}E']} on floating-point {name}: decoded as log like FlowKit")
            pnr = float(keywords[f"$P{i}R"])
            column[:] = (log0 if log0 > 0 else 1.0) * 10.0 ** (decades * column / pnr)
        else:
            gain = keywords.get(f"$P{i}G")
            try:
                gain_value = float(gain) if gain else 1.0
            except ValueError:
                notes.append(f"$P{i}G of {name} is not a number ({gain!r}): ignored")
                gain_value = 1.0
            if gain_value not in (0.0, 1.0):
                column /= gain_value
    return pd.DataFrame(values, columns=names)


def write_fcs(path, events: pd.DataFrame, *, keywords: dict[str, str] | None = None,
              calibration: dict[str, str] | None = None, volume_nl: float | None = None,
              timestep_s: float | None = None) -> Path:
    """Write events as FCS 3.1 list-mode 32-bit floats (flowio.create_fcs), return the path.

    ``calibration`` maps a parameter to its FCS 3.1 $PnCALIBRATION value "f,unit" (units per
    stored value), e.g. {"Diameter": "1,nm", "FL1-MESF": "1,MESF"}. ``volume_nl`` -> $VOL (nL),
    ``timestep_s`` -> $TIMESTEP. A "Time" column is taken in seconds and stored in ticks of
    $TIMESTEP (FCS 3.1: Time x $TIMESTEP = seconds); without ``timestep_s`` it is stored in
    seconds with $TIMESTEP = 1. Other ``keywords``: FCS standard ones start with "$"
    ($CYT, $DATE, $SPILLOVER, $PnS...), custom ones (EXOACQ_RUN_ID...) must not.
    """
    path = Path(path)
    if events.shape[1] == 0:
        raise _fail(path, "no parameters to write")
    names = [str(c) for c in events.columns]
    if len(set(names)) != len(names) or any(not n or "/" in n for n in names):
        raise _fail(path, f"parameter names must be unique, non-empty and without '/': {names}")
    values = events.to_numpy(dtype=np.float64, copy=True)
    time_index = next((i for i, n in enumerate(names) if n.lower() == "time"), None)
    if time_index is not None and timestep_s is None:
        timestep_s = 1.0
    if timestep_s is not None:
        if not (math.isfinite(timestep_s) and timestep_s > 0):
            raise _fail(path, f"timestep_s must be positive, got {timestep_s}")
        if time_index is not None:
            values[:, time_index] /= timestep_s

    metadata: dict[str, str] = {}
    for key, value in (keywords or {}).items():
        key_upper, text = str(key).strip().upper(), str(value)
        if not text:
            raise _fail(path, f"keyword {key_upper} has an empty value (FCS forbids empty values)")
        if _STRUCTURAL.match(key_upper):
            raise _fail(path, f"keyword {key_upper} is set by write_fcs from the events and arguments")
        bare = key_upper.lstrip("$").lower()
        standard = bare in flowio.fcs_keywords.FCS_STANDARD_OPTIONAL_KEYWORDS or re.match(r"^p\d+[dflopstv]$", bare)
        if key_upper.startswith("$") != bool(standard):
            raise _fail(path, f"keyword {key_upper}: only FCS 3.1 standard keywords start with '$'")
        metadata[key_upper] = text
    pns = [metadata.pop(f"$P{i}S", "") for i in range(1, len(names) + 1)]
    for name, value in (calibration or {}).items():
        if name not in names:
            raise _fail(path, f"calibration for {name!r}, which is not a parameter ({names})")
        if not re.match(r"^[-+0-9.eE]+,\S.*$", value) or not math.isfinite(float(value.split(",")[0])):
            raise _fail(path, f"$PnCALIBRATION for {name} must be 'factor,unit' (e.g. '1,nm'), got {value!r}")
        metadata[f"$P{names.index(name) + 1}CALIBRATION"] = value
    if volume_nl is not None:
        if not (math.isfinite(volume_nl) and volume_nl > 0):
            raise _fail(path, f"volume_nl must be positive, got {volume_nl}")
        metadata["$VOL"] = repr(float(volume_nl))
    if timestep_s is not None:
        metadata["$TIMESTEP"] = repr(float(timestep_s))
    stored = values.astype("<f4")
    for i in range(len(names)):   # $PnR: informative for floats; the largest value, at least 1
        finite = stored[:, i][np.isfinite(stored[:, i])]
        metadata[f"$P{i + 1}R"] = str(max(1, math.ceil(float(finite.max()))) if finite.size else 1)
    flat = array("f")
    flat.frombytes(np.ascontiguousarray(stored).astype("=f4").tobytes())
    try:
        with open(path, "wb") as handle:
            flowio.create_fcs(handle, flat, names, opt_channel_names=pns if any(pns) else None,
                              metadata_dict=metadata)
    except OSError as exc:
        raise _fail(path, f"cannot write ({exc.strerror or exc})") from None
    return path
