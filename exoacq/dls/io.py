"""Hardware-correlator files: ALV ``.ASC`` and correlator.com ``.SIN`` (read, write); PicoQuant
PTU photon files are in :mod:`exoacq.dls.ptu`.

ALV ``.ASC`` (Windows-1252, CRLF): the model on line 1, ``Key : value`` lines, then blocks
(a quoted title, rows, a blank line): ``"Correlation"`` (lag ms, g2-1 per column), ``"Count
Rate"`` (s, kHz per column), ``Monitor Diode``, ALV-7004/USB's own ``"Cumulant 1.Order"``..
``"3.Order"`` (FluctuationFreq. [1/ms], DiffCoefficient [um^2/s], Hydrodyn. Radius [nm],
Expansion Parameter mu2 [1/ms^2], mu3 [1/ms^3]) and ``"StandardDeviation"`` (sigma of g2-1
per lag). Columns: ALV-7004 Modes have one or two groups of two slots; ``A-CHn`` fills slot n,
a cross term ``C-CHa/b`` of group g slot 2g + a mod 2 ("C-CH0/1+1/0": CH0/1 and CH1/0, the
cross-correlations both ways); a slot's count-rate column is the one beside it (for CHa/b
detector a's, and ``count_rate_hz`` is MeanCRa). CGS-8F: column i is Angle(i), MeanCRi.
ALV-5000/6000 word Modes ("SINGLE AUTO CH0", "DUAL CROSS") and ``"Correlation (Multi,
Averaged)"`` tables (a names row; per channel the "Average" column is the curve, the single
runs are ``subruns``) are read too. Units become s, degC, Hz; the vendor's cumulants go to
every correlation's ``vendor_cumulants`` as ``gamma_per_s``, ``diffusion_um2_s``,
``radius_nm``, ``mu2_per_s2``, ``mu3_per_s3`` and ``pdi`` = mu2/gamma^2 (derived here).
``DLSRecord.header`` keeps the header values (stripped, unquoted), ``Monitor Diode`` and
``StandardDeviation`` (sigmas, one per lag). A malformed file raises :class:`DLSFileError`,
one line naming the file and line.
"""
from __future__ import annotations

import re
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from exoacq.dls.record import Correlation, DLSRecord
from exoacq.errors import ExoacqError

ZERO_C_K = 273.15


class DLSFileError(ExoacqError):
    """A correlator or photon file that cannot be read: ``path:line: what``."""

    code = "bad_dls_file"

    def __init__(self, path: str | Path, what: str, line: int | None = None, where: str | None = None):
        self.path, self.line = Path(path), line
        place = f"{path}:{line}" if line is not None else f"{path}: {where}" if where else f"{path}"
        super().__init__(re.sub(r"[\r\n]+", " ", f"{place}: {what}"))


class PhotonFileError(DLSFileError):
    """A photon (time-tag) file given where a correlation was expected."""

    code = "photon_file"


# -- text helpers -------------------------------------------------------------------------------
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _lines(path: Path, data: bytes, kind: str) -> tuple[list[str], bool]:
    """The text lines of a file (refusing empty and binary files) and whether its last line is whole."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    if not data.strip():
        raise DLSFileError(path, "empty file", line=1)
    bad = _CONTROL.search(data)
    if bad:
        raise DLSFileError(path, f"binary data (byte 0x{bad.group()[0]:02X}), not {kind} text",
                           line=data.count(b"\n", 0, bad.start()) + 1)
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    lines = re.split(r"\r\n|\r|\n", text)
    whole = lines[-1] == ""
    return (lines[:-1] if whole else lines), whole


def _read(path: Path, size: int = -1) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(size)
    except OSError as exc:
        raise DLSFileError(path, f"cannot read ({exc.strerror})") from None


def _cut(path: Path, lines: list[str]) -> DLSFileError:
    return DLSFileError(path, "the file ends in the middle of a line (truncated?)", line=len(lines))


def _number(path: Path, line: int, text: str, what: str) -> float:
    text = text.strip().strip('"')
    if not _NUMBER.fullmatch(text):
        raise DLSFileError(path, f"{what}: {text[:40]!r} is not a number", line=line)
    return float(text)


def _rows(path: Path, rows: list[tuple[int, str]], title: str, title_line: int) -> np.ndarray:
    """A block's numeric rows as a 2-D array; every row must have as many values as the first."""
    table = []
    for line, text in rows:
        fields = text.split()
        if table and len(fields) != len(table[0]):
            raise DLSFileError(path, f"{title} row has {len(fields)} values, the block's first row (line "
                               f"{rows[0][0]}) has {len(table[0])} (file truncated or edited?)", line=line)
        table.append([_number(path, line, f, f"{title} block") for f in fields])
    if not table:
        raise DLSFileError(path, f"the {title} block has no rows (file truncated?)", line=title_line)
    return np.array(table, dtype=float)


def _ascending(path: Path, rows: list[tuple[int, str]], column: np.ndarray, what: str) -> None:
    bad = np.flatnonzero(np.diff(column) <= 0)
    if bad.size or column[0] < 0:
        raise DLSFileError(path, f"{what} must be positive and increasing", line=rows[int(bad[0]) + 1 if bad.size else 0][0])


def _split_key(text: str) -> tuple[str, str] | None:
    sep = ":" if ":" in text else "\t" if "\t" in text else None
    if sep is None:
        return None
    key, _, value = text.partition(sep)
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return key.strip(), value


# -- ALV ------------------------------------------------------------------------------------
class _Block:
    def __init__(self, title: str, line: int):
        self.title, self.line, self.rows, self.names, self.closed = title, line, [], None, False


def _alv_structure(path: Path, lines: list[str]) -> tuple[dict[str, tuple[int, str]], list[_Block]]:
    header: dict[str, tuple[int, str]] = {}
    blocks: list[_Block] = []
    block: _Block | None = None
    for n, text in enumerate(lines[1:], start=2):
        stripped = text.strip()
        if not stripped:
            if block is not None:
                block.closed, block = True, None
        elif re.fullmatch(r'"[^"\t]*"', stripped):
            if block is not None:
                block.closed = True
            block = _Block(stripped.strip('"').strip(), n)
            blocks.append(block)
        elif block is not None and stripped.startswith('"') and not block.rows and block.names is None:
            block.names = [f.strip().strip('"').strip() for f in stripped.split("\t") if f.strip()]
        elif block is not None:
            block.rows.append((n, text))
        else:
            pair = _split_key(text)
            if pair is None or _NUMBER.fullmatch(pair[0]):
                what = "a data row outside any block (a blank line inside a block?)" if pair else \
                    f"expected 'Key : value', found {stripped[:40]!r}"
                raise DLSFileError(path, what, line=n)
            header[pair[0]] = (n, pair[1])
    return header, blocks


_CUMULANT_KEYS = {"FluctuationFreq. [1/ms]": ("gamma_per_s", 1000), "DiffCoefficient [µm²/s]": ("diffusion_um2_s", 1.0),
                  "Hydrodyn. Radius [nm]": ("radius_nm", 1.0), "Expansion Parameter µ2": ("mu2_per_s2", 10**6),
                  "Expansion Parameter µ3": ("mu3_per_s3", 10**9)}
_CUMULANT_LABELS = {name: (label, factor) for label, (name, factor) in _CUMULANT_KEYS.items()}


def _cumulants(path: Path, block: _Block, order: int) -> dict[str, float]:
    values: dict[str, float] = {}
    for line, text in block.rows:
        pair = _split_key(text)
        if pair is None:
            raise DLSFileError(path, f"expected 'name<TAB>value' in {block.title}", line=line)
        label = re.sub(r"[µμ]m²", "µm²", pair[0]).replace("Expansion Parameter u", "Expansion Parameter µ")
        name, factor = _CUMULANT_KEYS.get(label, (pair[0], 1.0))
        _number(path, line, pair[1], pair[0])
        values[name] = float(Decimal(pair[1].strip()) * Decimal(factor))   # 8.6208E-002 /ms -> 86.208 /s exactly
    needed = ["gamma_per_s", "diffusion_um2_s", "radius_nm"] + [f"mu{k}_per_s{k}" for k in range(2, order + 1)]
    missing = [n for n in needed if n not in values]
    if missing:
        last = block.rows[-1][0] if block.rows else block.line
        raise DLSFileError(path, f"{block.title} lacks {', '.join(missing)} (file truncated?)", line=last)
    if order >= 2 and values["gamma_per_s"] > 0:
        values["pdi"] = values["mu2_per_s2"] / values["gamma_per_s"] ** 2
    return values


def _mode_labels(mode: str) -> list[tuple[str, int]]:
    """(channel label, correlation column, 0-based) for an ALV Mode string; [] if unknown."""
    upper = mode.upper()
    if re.search(r"\b(SINGLE|DUAL|AUTO|CROSS)\b", upper):   # ALV-5000/6000 words
        cross = "CROSS" in upper
        if "DUAL" in upper:
            return [("CH0/1", 0), ("CH1/0", 1)] if cross else [("CH0", 0), ("CH1", 1)]
        ch = re.search(r"CH\s*(\d)", upper)
        a = int(ch.group(1)) if ch else 0
        return [(f"CH{a}/{1 - a}" if cross and a < 2 else f"CH{a}", 0)]
    placed: list[tuple[str, int]] = []
    for group, term in enumerate(upper.split()):
        for kind, items in re.findall(r"([AC])-CH([\d/+]+)", term):
            for item in items.split("+"):
                if kind == "A" and item.isdigit():
                    placed.append((f"CH{item}", int(item)))
                elif kind == "C" and re.fullmatch(r"\d/\d", item):
                    placed.append((f"CH{item}", 2 * group + int(item[0]) % 2))
                else:
                    return []
    return placed if len({c for _, c in placed}) == len(placed) else []


def _detector(label: str) -> int | None:
    found = re.match(r"CH(\d+)", label)
    return int(found.group(1)) if found else None


def read_alv(path: str | Path) -> DLSRecord:
    """Read an ALV ``.ASC`` file (ALV-5000/6000/7004, single or multi-angle, averaged or single run)."""
    path = Path(path)
    data = _read(path)
    lines, whole = _lines(path, data, "ALV .ASC")
    if not lines[0].startswith("ALV"):
        raise DLSFileError(path, f"not an ALV .ASC file: line 1 is {lines[0][:40]!r}, not the correlator model "
                           "(e.g. 'ALV-7004/USB')", line=1)
    if not whole:
        raise _cut(path, lines)
    raw, blocks = _alv_structure(path, lines)
    header: dict[str, Any] = {key: value for key, (_, value) in raw.items()}
    named = {b.title.lower().replace(" ", ""): b for b in blocks}
    corr_block = next((b for b in blocks if b.title.lower().startswith("correlation")), None)
    if corr_block is None:
        raise DLSFileError(path, "no \"Correlation\" block (file truncated?)", line=len(lines))

    def field(pattern: str, what: str, required: bool = True) -> tuple[str, float] | None:
        for key, (line, value) in raw.items():
            if re.fullmatch(pattern, key):
                return key, _number(path, line, value, key)
        if required:
            raise DLSFileError(path, f"no '{what}' line in the header", line=len(lines))
        return None

    temp_key, temp = field(r"Temperature\s*\[.*\]", "Temperature [K]")
    temperature_c = round(temp - ZERO_C_K, 9) if "K" in temp_key else temp
    viscosity = field(r"Viscosity.*", "Viscosity [cp]", required=False)
    wavelength_nm = field(r"Wavelength.*", "Wavelength [nm]")[1]
    refractive_index = field(r"Refractive Index.*", "Refractive Index")[1]
    duration = field(r"Duration.*", "Duration [s]", required=False)
    angles = {int(m.group(1)): _number(path, line, v, key) for key, (line, v) in raw.items()
              if (m := re.fullmatch(r"Angle\s*\((\d+)\).*", key))}
    if not angles:
        angles = {0: field(r"Angle\b[^(]*", "Angle")[1]}
    mean_cr = {int(m.group(1)): _number(path, line, v, key) * 1e3 for key, (line, v) in raw.items()
               if (m := re.fullmatch(r"MeanCR(\d+).*", key))}

    if not corr_block.closed:
        raise DLSFileError(path, f"the file ends inside the {corr_block.title} block (truncated?)", line=len(lines))
    table = _rows(path, corr_block.rows, corr_block.title, corr_block.line)
    _ascending(path, corr_block.rows, table[:, 0], "Correlation lags")
    lag_s, columns = table[:, 0] * 1e-3, table[:, 1:]

    counts = named.get("countrate")
    trace = None
    if counts is not None:
        trace = _rows(path, counts.rows, counts.title, counts.line)
        _ascending(path, counts.rows, trace[:, 0], "Count Rate times")
        runs = field(r"Runs", "Runs", required=False)
        if (not counts.closed and duration and (runs is None or runs[1] <= 1)
                and trace[-1, 0] < 0.9 * duration[1]):
            raise DLSFileError(path, f"the Count Rate trace ends at {trace[-1, 0]:g} s of {duration[1]:g} s "
                               "(file truncated?)", line=len(lines))

    if len(angles) > 1:
        if columns.shape[1] != len(angles):
            raise DLSFileError(path, f"{columns.shape[1]} correlation columns for {len(angles)} angles",
                               line=corr_block.line)
        channels = [(f"CH{i}", k, k, []) for k, i in enumerate(sorted(angles))]
    elif corr_block.names is not None:   # "Correlation (Multi, Averaged)": per channel, Average + runs
        names = corr_block.names[1:]
        labels = [label for label, _ in _mode_labels(header.get("Mode", ""))] or ["CH0"]
        if len(names) != columns.shape[1] or columns.shape[1] % len(labels):
            raise DLSFileError(path, f"{len(names)} column names for {columns.shape[1]} columns of "
                               f"{len(labels)} channel(s)", line=corr_block.line + 1)
        per = columns.shape[1] // len(labels)
        channels = []
        for c, label in enumerate(labels):
            cols = list(range(c * per, (c + 1) * per))
            average = next((k for k in cols if names[k].lower().startswith("average")), cols[0])
            channels.append((label, average, c, [k for k in cols if k != average]))
    else:
        placed = [(lab, col) for lab, col in _mode_labels(header.get("Mode", "")) if col < columns.shape[1]]
        used = {col for _, col in placed}
        placed += [(f"col{k + 1}", k) for k in range(columns.shape[1]) if k not in used and np.any(columns[:, k])]
        channels = [(lab, col, col, []) for lab, col in sorted(placed, key=lambda p: p[1])]

    cumulants = {int(m.group(1)): _cumulants(path, b, int(m.group(1))) for b in blocks
                 if (m := re.fullmatch(r"cumulant\s*(\d)\.\s*order", b.title.lower()))}
    sd = named.get("standarddeviation")
    if sd is not None:
        sigma = _rows(path, sd.rows, sd.title, sd.line)
        if sigma.shape[0] != lag_s.size or not np.allclose(sigma[:, 0] * 1e-3, lag_s, rtol=1e-4):
            raise DLSFileError(path, f"StandardDeviation has {sigma.shape[0]} rows for {lag_s.size} lags "
                               "(file truncated?)", line=sd.rows[-1][0])
        header["StandardDeviation"] = sigma[:, 1].tolist() if sigma.shape[1] == 2 else sigma[:, 1:].T.tolist()

    correlations = []
    for label, col, count_col, run_cols in channels:
        det = _detector(label)
        has_trace = trace is not None and count_col + 1 < trace.shape[1]
        rate = mean_cr.get(det) if det is not None else None
        if rate is None and has_trace:
            rate = float(np.mean(trace[:, count_col + 1])) * 1e3
        correlations.append(Correlation(
            angle_deg=angles[sorted(angles)[col]] if len(angles) > 1 else angles[0], lag_s=lag_s.copy(),
            g2_minus_1=columns[:, col].copy(), count_rate_hz=rate,
            count_trace_time_s=trace[:, 0].copy() if has_trace else None,
            count_trace_hz=trace[:, count_col + 1] * 1e3 if has_trace else None,
            subruns=[columns[:, k].copy() for k in run_cols],
            vendor_cumulants={k: dict(v) for k, v in cumulants.items()}, channel=label))
    return DLSRecord(wavelength_nm=wavelength_nm, temperature_c=temperature_c,
                     viscosity_mpa_s=viscosity[1] if viscosity else None, refractive_index=refractive_index,
                     correlations=correlations, duration_s=duration[1] if duration else None, source=str(path),
                     format="alv-asc", instrument=lines[0].strip(), header=header, path=path)


def _e(value: float, width: int = 14, digits: int = 5) -> str:
    """ALV's number format: ``2.50000E-005`` (three exponent digits), right-aligned."""
    mantissa, exponent = f"{value:.{digits}E}".split("E")
    return f"{mantissa}E{'-' if int(exponent) < 0 else '+'}{abs(int(exponent)):03d}".rjust(width)


def _label(key: str) -> str:
    if key in ("Date", "Time"):
        return f"{key} :"
    if key == "Samplename" or key.startswith("SampMemo"):
        return f"{key} : "
    return "Stop TP [ms]   :" if key == "Stop TP [ms]" else key.ljust(16) + ":"


def _value(key: str, value: Any) -> str:
    text = str(value)
    if key in ("Mode", "Date", "Time", "Samplename") or key.startswith("SampMemo") or not _NUMBER.fullmatch(text):
        return f'"{text}"'
    return text.rjust(13 if key == "FloatDur [ms]" else 10)


def _alv_mode(labels: list[str]) -> tuple[str, list[int]] | None:
    """An ALV-7004 Mode placing these labels, and their columns; None if they are not ALV channels."""
    cols: dict[str, int] = {}
    for lab in labels:
        if (m := re.fullmatch(r"CH([0-3])", lab)):
            cols[lab] = int(m.group(1))
    for lab in labels:
        if (m := re.fullmatch(r"CH([0-3])/([0-3])", lab)):
            free = [g for g in (0, 1) if not {2 * g, 2 * g + 1} & set(v for k, v in cols.items() if "/" not in k)]
            if not free:
                return None
            cols[lab] = 2 * free[0] + int(m.group(1)) % 2
    if len(cols) != len(labels) or len(set(cols.values())) != len(labels):
        return None
    groups = []
    for g in (0, 1):
        here = sorted((c, lab) for lab, c in cols.items() if c // 2 == g)
        autos = "+".join(lab[2:] for _, lab in here if "/" not in lab)
        crosses = "+".join(lab[2:] for _, lab in here if "/" in lab)
        groups.append((f"A-CH{autos}" if autos else "") + (f"C-CH{crosses}" if crosses else ""))
    mode = "  ".join(g or "A-" for g in groups).removesuffix("  A-")
    placed = dict(_mode_labels(mode))
    return (mode, [cols[lab] for lab in labels]) if placed == cols else None


def write_alv(path: str | Path, record: DLSRecord) -> Path:
    """Write ``record`` as an ALV ``.ASC`` file (CRLF, Windows-1252) that :func:`read_alv` reads
    back to the same lags, g2-1, count traces, cumulants and header values (ALV's 6-digit
    precision; sub-runs are not written). One angle: the ALV-7004/USB layout (up to 4
    channels; channels not named like ALV's CH0..CH3 / CHa/b become CH0..). Several angles:
    the CGS-8F layout, channels CH1..CHn. The header lines of an ALV record are kept."""
    corrs = record.correlations
    h = record.header if record.format == "alv-asc" else {}
    if not corrs:
        raise ValueError("record has no correlations")
    lag_s = corrs[0].lag_s
    if any(c.lag_s.shape != lag_s.shape or not np.allclose(c.lag_s, lag_s, rtol=1e-9) for c in corrs):
        raise ValueError("an ALV file has one lag column: every correlation needs the same lags")
    if not all(np.all(np.isfinite(c.g2_minus_1)) for c in corrs):
        raise ValueError("g2-1 has non-finite values")
    multi = len({c.angle_deg for c in corrs}) > 1 or len(corrs) > 4 or "CGS" in record.instrument
    if multi:
        labels, cols, slots = [f"CH{i}" for i in range(1, len(corrs) + 1)], list(range(len(corrs))), len(corrs)
        mode = h["Mode"] if "AUTO" in h.get("Mode", "").upper() else f"{len(corrs)} x AUTO"
    else:
        labels = [c.channel for c in corrs]
        found = _alv_mode(labels)
        if found is None:
            labels = [f"CH{i}" for i in range(len(corrs))]
            found = _alv_mode(labels)
        (mode, cols), slots = found, 4
        if "Mode" in h and set(_mode_labels(h["Mode"])) == set(zip(labels, cols)):
            mode = h["Mode"]
    now = time.localtime()
    model = record.instrument if record.instrument.startswith("ALV") and ("CGS" in record.instrument) == multi \
        else "ALV-7004 CGS-8F Data" if multi else "ALV-7004/USB"
    keys = {"Date": time.strftime("%d.%m.%Y", now), "Time": time.strftime("%H:%M:%S", now),
            "Samplename": record.source or "exoacq", **{f"SampMemo({i})": "" for i in range(10)}}
    out = [model] + [f"{_label(k)}\t{_value(k, h.get(k, v))}" for k, v in keys.items()]
    out.append(f"{_label('Temperature [K]')}\t{record.temperature_c + ZERO_C_K:14.5f}")
    if record.viscosity_mpa_s is not None:
        out.append(f"{_label('Viscosity [cp]')}\t{record.viscosity_mpa_s:14.5f}")
    out += [f"{_label('Refractive Index')}\t{record.refractive_index:14.5f}",
            f"{_label('Wavelength [nm]')}\t{record.wavelength_nm:14.5f}"]
    if multi:
        out += [f"{_label(f'Angle({i})[°]')}\t{c.angle_deg:14.5f}" for i, c in enumerate(corrs, 1)]
    else:
        out.append(f"{_label('Angle [°]')}\t{corrs[0].angle_deg:14.5f}")
    if record.duration_s is not None:
        d = record.duration_s
        text = f"{d:14.1f}" if multi and round(d, 1) == d else f"{int(d):10d}" if d == int(d) else f"{d:14.3f}"
        out.append(f"{_label('Duration [s]')}\t{text}")
    computed = r"(Temperature|Viscosity|Refractive Index|Wavelength|Angle|Duration|MeanCR|Mode$)"
    out += [f"{_label(k)}\t{_value(k, v)}" for k, v in h.items()
            if k not in keys and k not in ("Monitor Diode", "StandardDeviation") and not re.match(computed, k)]
    if "Runs" not in h:
        out.append(f"{_label('Runs')}\t{max(1, len(corrs[0].subruns)):10d}")
    out.append(f"{_label('Mode')}\t{_value('Mode', mode)}")
    rates: dict[int, float | None] = {} if multi else {n: 0.0 for n in range(4)}
    for label, c in zip(labels, corrs):
        det = _detector(label)
        if det is not None and rates.get(det) in (None, 0.0):
            rates[det] = c.count_rate_hz
    out += [f"{_label(f'MeanCR{n} [kHz]')}\t{r / 1e3:14.5f}" for n, r in sorted(rates.items()) if r is not None]
    table = np.zeros((lag_s.size, slots))
    for c, col in zip(corrs, cols):
        table[:, col] = c.g2_minus_1
    out += ["", '"Correlation"'] + ["\t".join([_e(t * 1e3)] + [_e(v) for v in row]) for t, row in zip(lag_s, table)]
    out.append("")
    traced = [c for c in corrs if c.count_trace_hz is not None]
    if traced:
        t = traced[0].count_trace_time_s
        counts = np.zeros((t.size, slots))
        for c, col in zip(corrs, cols):
            if c.count_trace_hz is not None:
                if c.count_trace_hz.size != t.size:
                    raise ValueError("an ALV file has one count-rate time column: the traces need the same times")
                counts[:, col] = c.count_trace_hz / 1e3
        out += ['"Count Rate"'] + ["\t".join(f"{v:14.5f}" for v in (ti, *row)) for ti, row in zip(t, counts)] + [""]
    if "Monitor Diode" in h:
        out += [f"Monitor Diode\t{str(h['Monitor Diode']).rjust(10)}", ""]
    for order, values in sorted(corrs[0].vendor_cumulants.items()) if not multi else []:
        out.append(f'"Cumulant {order}.Order"')
        for name, v in values.items():
            if name != "pdi":
                label, factor = _CUMULANT_LABELS.get(name, (name, 1.0))
                out.append(f"{label}\t{_e(v / factor, 12, 4)}")
        out.append("")
    sigma = h.get("StandardDeviation")
    if sigma is not None and np.asarray(sigma).shape[-1] == lag_s.size:
        columns = np.atleast_2d(np.asarray(sigma, dtype=float))
        out += ['"StandardDeviation"'] + ["\t".join([_e(t * 1e3)] + [_e(v) for v in columns[:, i]])
                                          for i, t in enumerate(lag_s)]
    path = Path(path)
    path.write_bytes(("\r\n".join(out) + "\r\n").encode("cp1252", errors="replace"))
    return path


# -- correlator.com .SIN ------------------------------------------------------------------------
_SIN_MODES = {"single auto": ["CH0"], "single cross": ["CH0/1"], "dual auto": ["CH0", "CH1"],
              "dual cross": ["CH0/1", "CH1/0"], "quad": ["CH0", "CH1", "CH0/1", "CH1/0"]}


def _sin_labels(path: Path, mode: str, line: int) -> list[str]:
    if mode.strip().lower() in _SIN_MODES:
        return _SIN_MODES[mode.strip().lower()]
    numbers = mode.split()
    if numbers and len(numbers) % 2 == 0 and all(n.isdigit() for n in numbers):   # integer mode: a b pairs
        pairs = zip(numbers[::2], numbers[1::2])
        return [f"CH{a}" if a == b else f"CH{a}/{b}" for a, b in pairs]
    raise DLSFileError(path, f"unknown correlator Mode {mode!r}", line=line)


def read_sin(path: str | Path) -> DLSRecord:
    """Read a correlator.com (Flex) ``.SIN`` file.

    Sections: ``[Parameters]`` (``Key= value``: Duration [s], Mode, Sample, Index, WaveLength
    [nm], Angle [deg], Viscosity [cP], Temperature [degC]), ``[CorrelationFunction]`` (lag in
    s, one column per correlation of the Mode), ``[IntensityHistory]`` (``TraceNumber=``,
    then time in s and counts/s per detector). Modes: Single/Dual Auto, Single/Dual Cross,
    Quad (AC0, AC1, CC01, CC10), or integer pairs ("2 3 3 2" = CH2/3, CH3/2). The Flex
    software writes g2 (baseline 1) and zeros in channels it did not fill: zero rows at the
    ends are dropped, and a curve whose tail averages above 0.5 is taken as g2 and 1 is
    subtracted (a tail near 0 means it already is g2-1)."""
    path = Path(path)
    data = _read(path)
    lines, whole = _lines(path, data, "correlator.com .SIN")
    if not whole:
        raise _cut(path, lines)
    header: dict[str, Any] = {"model": lines[0].strip()}
    at: dict[str, int] = {}
    sections: dict[str, list[tuple[int, str]]] = {}
    at_section: dict[str, int] = {}
    section = ""
    for n, text in enumerate(lines[1:], start=2):
        stripped = text.strip()
        if re.fullmatch(r"\[[^\]]+\]", stripped):
            section = stripped[1:-1].lower()
            sections.setdefault(section, [])
            at_section.setdefault(section, n)
        elif "=" in stripped and not _NUMBER.match(stripped):
            key, _, value = stripped.partition("=")
            header.setdefault(key.strip(), value.strip())
            at.setdefault(key.strip(), n)
        elif stripped and section:
            sections[section].append((n, text))
    for needed in ("CorrelationFunction", "IntensityHistory"):
        if needed.lower() not in sections:
            raise DLSFileError(path, f"no [{needed}] section (file truncated?)", line=len(lines))

    def param(name: str, required: bool = True) -> float | None:
        key = next((k for k in header if k.lower() == name.lower()), None)
        if key is None:
            if required:
                raise DLSFileError(path, f"no '{name}=' in [Parameters]", line=len(lines))
            return None
        return _number(path, at[key], header[key], name)

    labels = _sin_labels(path, header.get("Mode", ""), at.get("Mode", 1)) if "Mode" in header else None
    if labels is None:
        raise DLSFileError(path, "no 'Mode=' in [Parameters]", line=len(lines))
    corr_rows = sections["correlationfunction"]
    table = _rows(path, corr_rows, "CorrelationFunction", at_section["correlationfunction"])
    if table.shape[1] < len(labels) + 1:
        raise DLSFileError(path, f"Mode {header['Mode']!r} needs {len(labels)} correlation columns, "
                           f"the rows have {table.shape[1] - 1}", line=corr_rows[0][0])
    _ascending(path, corr_rows, table[:, 0], "CorrelationFunction lags")
    trace_rows = sections["intensityhistory"]
    trace = _rows(path, trace_rows, "IntensityHistory", at_section["intensityhistory"])
    expected = header.get("TraceNumber")
    if expected is not None and trace.shape[0] < int(_number(path, at["TraceNumber"], expected, "TraceNumber")):
        raise DLSFileError(path, f"IntensityHistory has {trace.shape[0]} rows, TraceNumber says {expected} "
                           "(file truncated?)", line=trace_rows[-1][0])
    correlations = []
    angle_deg = param("Angle")
    for k, label in enumerate(labels):
        g = table[:, k + 1]
        filled = np.flatnonzero(g != 0)
        if filled.size < 2:
            continue
        keep = slice(filled[0], filled[-1] + 1)
        lag, g = table[keep, 0], g[keep]
        tail = g[-max(5, g.size // 10):]
        g2_minus_1 = g - 1.0 if np.mean(tail) > 0.5 else g.copy()
        det = _detector(label)
        col = det + 1 if det is not None and det + 1 < trace.shape[1] else None
        correlations.append(Correlation(
            angle_deg=angle_deg, lag_s=lag, g2_minus_1=g2_minus_1,
            count_rate_hz=float(np.mean(trace[:, col])) if col else None,
            count_trace_time_s=trace[:, 0].copy() if col else None,
            count_trace_hz=trace[:, col].copy() if col else None, channel=label))
    if not correlations:
        raise DLSFileError(path, "the CorrelationFunction holds no data (all zeros)", line=corr_rows[0][0])
    return DLSRecord(wavelength_nm=param("WaveLength"), temperature_c=param("Temperature"),
                     viscosity_mpa_s=param("Viscosity", required=False), refractive_index=param("Index"),
                     correlations=correlations, duration_s=param("Duration", required=False), source=str(path),
                     format="sin", instrument=lines[0].strip(), header=header, path=path)


def write_sin(path: str | Path, record: DLSRecord) -> Path:
    """Write ``record`` (one angle) as a correlator.com ``.SIN`` file (g2, lags in s, CRLF)."""
    corrs = record.correlations
    labels = [c.channel for c in corrs]
    if not all(re.fullmatch(r"CH\d+(/\d+)?", lab) for lab in labels):
        labels = [f"CH{i}" for i in range(len(corrs))]
    mode = next((m.title() for m, labs in _SIN_MODES.items() if labs == labels), None) or " ".join(
        f"{lab[2:].split('/')[0]} {lab.split('/')[-1].removeprefix('CH')}" for lab in labels)
    lag_s = corrs[0].lag_s
    if any(c.lag_s.shape != lag_s.shape or not np.allclose(c.lag_s, lag_s) for c in corrs):
        raise ValueError("a .SIN file has one lag column: every correlation needs the same lags")
    h = record.header
    params = {"Duration": record.duration_s, "Mode": mode, "Sample": h.get("Sample", record.source),
              "Index": record.refractive_index, "WaveLength": record.wavelength_nm, "Angle": corrs[0].angle_deg,
              "Temperature": record.temperature_c}
    if record.viscosity_mpa_s is not None:
        params["Viscosity"] = record.viscosity_mpa_s
    out = [h.get("model", "FLXA"), f"Version= {h.get('Version', '1d')}", "", "[Parameters]"]
    out += [f"{k}= {v:f}" if isinstance(v, float) else f"{k}= {v}" for k, v in params.items() if v is not None]
    out += ["", "[CorrelationFunction]"]
    out += ["\t".join(f"{v:e}" for v in (t, *(c.g2_minus_1[i] + 1.0 for c in corrs))) for i, t in enumerate(lag_s)]
    detectors = max(_detector(lab) or 0 for lab in labels) + 1
    traced = [c for c in corrs if c.count_trace_hz is not None]
    t = traced[0].count_trace_time_s if traced else np.zeros(0)
    counts = np.zeros((t.size, max(2, detectors)))
    for lab, c in zip(labels, corrs):
        if c.count_trace_hz is not None and c.count_trace_hz.size == t.size:
            counts[:, _detector(lab) or 0] = c.count_trace_hz
    out += ["", "[IntensityHistory]", f"TraceNumber= {t.size}"]
    out += ["\t".join([f"{ti:f}"] + [f"{v:e}" for v in row]) for ti, row in zip(t, counts)]
    path = Path(path)
    path.write_bytes(("\r\n".join(out) + "\r\n").encode("cp1252", errors="replace"))
    return path


# -- any file -----------------------------------------------------------------------------------
def read_dls_file(path: str | Path) -> DLSRecord:
    """A correlator file by its content: ALV ``.ASC`` or correlator.com ``.SIN``. A PicoQuant PTU
    file holds photon arrival times, not a correlation: it raises :class:`PhotonFileError`
    (correlate its photons first: :func:`exoacq.dls.ptu.read_ptu` and the software correlator)."""
    path = Path(path)
    head = _read(path, 4096)
    if head.startswith(b"PQTTTR"):
        raise PhotonFileError(path, "a PicoQuant PTU file holds photon arrival times, not a correlation: "
                              "the analysis correlates its photons first (read_ptu + the software correlator)",
                              where="byte 0")
    text = head.removeprefix(b"\xef\xbb\xbf")
    if text.startswith(b"ALV"):
        return read_alv(path)
    if re.search(rb"^\s*\[(Parameters|CorrelationFunction)\]", head, re.MULTILINE | re.IGNORECASE):
        return read_sin(path)
    if not head:
        raise DLSFileError(path, "empty file", line=1)
    if bad := _CONTROL.search(head):
        raise DLSFileError(path, "binary data, not an ALV .ASC or .SIN correlator file",
                           line=head.count(b"\n", 0, bad.start()) + 1)
    first = text.split(b"\n", 1)[0].decode("latin-1").strip()
    raise DLSFileError(path, f"not a correlator file: line 1 is {first[:40]!r} (expected an ALV .ASC file "
                       "starting with the model, e.g. 'ALV-7004/USB', or a correlator.com .SIN file)", line=1)
