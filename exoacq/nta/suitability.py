"""System suitability of NTA results: bead checks against a certified standard, calibration expiry.

A lab that releases batches under written procedures checks the instrument with
a bead standard of certified size and concentration before it measures samples
(a *bead check*), and uses a detection-volume calibration only until it expires.
This module

* reads a bead standard file (``calibrations/nta/beads-*.toml``: certified mean
  diameter and concentration with their uncertainties, the lot, acceptance limits
  in percent of the certified values);
* judges a bead-check run's result against it (:func:`evaluate_bead_check`: the
  measured mean and mode diameter and the concentration, each within its limit);
* assesses every result (:func:`assess`): flagged when its calibration has expired,
  when the newest bead check within the configured period failed, or when there is
  none in that period;
* lists bead checks over time for ``exoacq runs --bead-checks`` and the HTML report's
  trend (:func:`bead_check_trend`, :func:`format_bead_check_table`).

The mode is compared with the certified *mean*: certificates of monodisperse standards
state a mean (TEM or DLS); for a narrow distribution mode and mean agree. The limits are
the lab's (the shipped nominal standard: +/- 5 % on size, +/- 20 % on concentration; the
simulated instrument, 2 x 30 s: mean within 1 %, concentration within 5 %); published NTA accuracy on
100 nm polystyrene is 9-12 % expanded uncertainty on mode, median and mean (Kestens 2017;
De Temmerman 2014), so a real instrument's procedure may need wider ones.
"""
from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from exoacq.config import load_toml_model, resolve_file
from exoacq.errors import ConfigError, ProtocolError

#: Quantities a bead check judges: (key in the check, the standard's certified value and its uncertainty,
#: the acceptance limit, getter of the measured value from an nta.result document).
QUANTITIES = [
    ("mean_diameter_nm", "mean_diameter_nm", "mean_diameter_uncertainty_nm", "mean_diameter_pct",
     lambda d: (d.get("size_nm") or {}).get("mean")),
    ("mode_diameter_nm", "mean_diameter_nm", "mean_diameter_uncertainty_nm", "mode_diameter_pct",
     lambda d: (d.get("size_nm") or {}).get("mode")),
    ("concentration_per_ml", "concentration_per_ml", "concentration_uncertainty_per_ml", "concentration_pct",
     lambda d: d.get("concentration_per_ml")),
]
#: A bead standard file named in a request is read only if it is a regular file at most this large: a client
#: chooses the path, and /dev/zero, /dev/urandom or a FIFO would otherwise stall the daemon's main thread.
MAX_STANDARD_FILE_BYTES = 64 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CertifiedStandard(_Strict):
    kind: Literal["nta.beads"]
    version: int = Field(ge=1)
    name: str = Field(min_length=1)
    #: True for nominal (simulated, uncertified) values.
    nominal: bool
    lot: str = Field(min_length=1)
    manufacturer: str = ""
    material: str
    refractive_index: float = Field(gt=1)
    medium: str = "water"
    mean_diameter_nm: float = Field(gt=0)
    mean_diameter_uncertainty_nm: float = Field(ge=0)
    #: None: a size-only standard (no concentration check).
    concentration_per_ml: float | None = Field(None, gt=0)
    concentration_uncertainty_per_ml: float | None = Field(None, ge=0)


class Acceptance(_Strict):
    """Limits in percent of the certified value; None: that quantity is not checked."""

    mean_diameter_pct: float = Field(gt=0, le=100)
    mode_diameter_pct: float | None = Field(None, gt=0, le=100)
    concentration_pct: float | None = Field(None, gt=0, le=100)


class Provenance(_Strict):
    source: str
    date: date
    certificate: str
    note: str = ""


class BeadStandardFile(_Strict):
    standard: CertifiedStandard
    acceptance: Acceptance
    provenance: Provenance


def load_bead_standard(path: Path | str) -> BeadStandardFile:
    """Read and check a bead standard file; a one-line ConfigError names what is wrong."""
    standard = load_toml_model(path, BeadStandardFile, "bead standard")
    if standard.acceptance.concentration_pct is not None and standard.standard.concentration_per_ml is None:
        raise ConfigError(f"bead standard {path}: acceptance.concentration_pct needs standard.concentration_per_ml")
    return standard


def bead_check_setting(value: Any, relative_to: Path | None = None) -> dict[str, Any]:
    """The run setting of an acquire parameter ``bead_check`` (a standard file: absolute, or relative
    to ``relative_to`` then the project root): ``{"file", "standard"}`` with the file's content, so
    that the stored run states the limits it was judged by. Raises a one-line ProtocolError."""
    if not isinstance(value, str) or not value.strip():
        raise ProtocolError(f"bead_check = {value!r}: must be the path of a bead standard file "
                            "(e.g. calibrations/nta/beads-100nm.toml)")
    try:
        path = resolve_file(value, relative_to, what="bead standard")
        if not path.is_file() or path.stat().st_size > MAX_STANDARD_FILE_BYTES:
            raise ConfigError(f"bead standard {path}: not a TOML file of at most "
                              f"{MAX_STANDARD_FILE_BYTES // 1024} KiB")
        standard = load_bead_standard(path)
    except ConfigError as exc:
        raise ProtocolError(f"bead_check: {exc}") from None
    except (OSError, ValueError) as exc:  # a name the file system refuses: too long, a NUL byte
        raise ProtocolError(f"bead_check = {value[:200]!r}: not a readable file ({exc})") from None
    return {"file": str(path), "standard": standard.model_dump(mode="json")}


def _as_standard(standard: BeadStandardFile | dict[str, Any]) -> tuple[BeadStandardFile, str | None]:
    if isinstance(standard, BeadStandardFile):
        return standard, None
    if "file" in standard and "standard" in standard and "acceptance" not in standard:  # a run setting
        return BeadStandardFile.model_validate(standard["standard"]), standard["file"]
    return BeadStandardFile.model_validate(standard), None


def evaluate_bead_check(document: dict[str, Any], standard: BeadStandardFile | dict[str, Any]) -> dict[str, Any]:
    """Judge a bead-check run's ``nta.result`` against its standard.

    ``standard``: a loaded file, or the run setting from :func:`bead_check_setting`. Each
    checked quantity passes when ``|measured - certified| <= limit_pct / 100 * certified``;
    a missing measurement (no sized tracks, no calibrated volume) or an incomplete run fails.
    Returns ``{"standard", "file", "lot", "nominal", "passed", "checks": [{"quantity",
    "measured", "certified", "uncertainty", "limit_pct", "limit" [low, high], "deviation_pct",
    "passed"}], "problems"}`` where ``problems`` says in words why it failed."""
    std, file = _as_standard(standard)
    cert, acceptance = std.standard.model_dump(), std.acceptance.model_dump()
    checks, problems = [], []
    for quantity, certified_key, uncertainty_key, limit_key, get in QUANTITIES:
        limit_pct = acceptance[limit_key]
        if limit_pct is None:
            continue
        certified, uncertainty = cert[certified_key], cert[uncertainty_key]
        measured = get(document)
        low, high = certified * (1 - limit_pct / 100), certified * (1 + limit_pct / 100)
        deviation = None if measured is None else 100.0 * (measured / certified - 1)
        passed = measured is not None and low <= measured <= high
        checks.append({"quantity": quantity, "measured": measured, "certified": certified,
                       "uncertainty": uncertainty, "limit_pct": limit_pct, "limit": [low, high],
                       "deviation_pct": deviation, "passed": passed})
        if measured is None:
            problems.append(f"{quantity} was not measured")
        elif not passed:
            problems.append(f"{quantity} {measured:.4g} is {deviation:+.1f} % from the certified {certified:.4g} "
                            f"(limit +/- {limit_pct:g} %)")
    if document.get("complete") is False:
        problems.append("the run is incomplete (aborted)")
    return {"standard": std.standard.name, "file": file, "lot": std.standard.lot, "nominal": std.standard.nominal,
            "passed": not problems, "checks": checks, "problems": problems}


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _calibration_status(calibration: Path | str | None, on: date) -> tuple[dict[str, Any] | None, list[str]]:
    from exoacq.nta.calibration import load_nta_calibration

    if calibration is None:
        return None, []
    try:
        info = load_nta_calibration(Path(calibration)).calibration
    except ConfigError as exc:
        return {"file": str(calibration), "expires": None, "expired": None}, [f"calibration unreadable: {exc}"]
    expired = info.expired(on)
    status = {"file": str(calibration), "version": info.version, "date": info.date.isoformat(),
              "expires": None if info.expires is None else info.expires.isoformat(), "expired": expired}
    flags = [f"calibration {Path(calibration).name} v{info.version} expired on {info.expires} (valid through "
             f"that day; result of {on}): recalibrate"] if expired else []
    return status, flags


def _bead_check_entry(document: dict[str, Any], now: datetime) -> dict[str, Any]:
    check = document["bead_check"]
    time = _parse_time(document["time"])
    return {"run_id": document.get("run_id"), "time": document["time"], "passed": bool(check.get("passed")),
            "age_h": (now - time).total_seconds() / 3600.0, "standard": check.get("standard"),
            "lot": check.get("lot"), "problems": list(check.get("problems") or [])}


def assess(document: dict[str, Any], *, calibration: Path | str | None, bead_checks: list[dict[str, Any]],
           period_h: float | None, now: datetime | None = None) -> dict[str, Any]:
    """The ``suitability`` of an NTA result.

    ``calibration``: the detection-volume calibration file the result used (None: a volume given
    directly or none); ``bead_checks``: stored run records, newest first (any records: those whose
    result has a ``bead_check`` and whose state is ``done`` count); ``period_h``: how long a bead
    check qualifies the instrument; ``now``: when the sample was measured (default: the document's
    ``time``; bead checks after it do not count); ``period_h`` None: bead checks are not required
    (the newest of any age is reported, flagged only if it failed). A bead-check run is judged by
    its own check.

    Returns ``{"calibration": {file, version, date, expires, expired} | None, "bead_check": {run_id,
    time, passed, age_h, standard, lot, problems} | None, "period_h", "suitable", "flags",
    "measured_at"}``: the flags (one line each, also meant for the document's warnings) say why it
    is not suitable; ``measured_at`` is ``now`` (re-processing judges at the same time)."""
    measured_at = None if now is None else now.isoformat()
    now = _parse_time(document["time"]) if now is None else now
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    cal_status, flags = _calibration_status(calibration, now.astimezone(timezone.utc).date())
    if document.get("bead_check") is not None:  # this run is itself a bead check
        newest = {**_bead_check_entry(document, now), "age_h": 0.0}
        if not newest["passed"]:
            flags.append(f"this bead check failed ({newest['standard']}, lot {newest['lot']}): "
                         + "; ".join(newest["problems"]))
    else:
        earlier = [_bead_check_entry(r["result"], now) for r in bead_checks
                   if r.get("state") == "done" and (r.get("result") or {}).get("bead_check") is not None
                   and r["result"].get("run_id") != document.get("run_id")]
        newest = min((c for c in earlier if c["age_h"] >= 0), key=lambda c: c["age_h"], default=None)
        if period_h is not None and (newest is None or newest["age_h"] > period_h):
            last = "none recorded" if newest is None else f"the last: {newest['run_id']}, {newest['age_h']:.1f} h before"
            flags.append(f"no bead check within the last {period_h:g} h ({last})")
            newest = None
        elif newest is not None and not newest["passed"]:  # (period_h None: of any age, not required)
            flags.append(f"the last bead check failed ({newest['run_id']}, {newest['age_h']:.1f} h before, "
                         f"{newest['standard']}, lot {newest['lot']}): " + "; ".join(newest["problems"]))
    return {"calibration": cal_status, "bead_check": newest, "period_h": period_h, "suitable": not flags,
            "flags": flags, "measured_at": document["time"] if measured_at is None else measured_at}


def reassess(document: dict[str, Any], original: dict[str, Any], *,
             calibration: Path | str | None | bool = True) -> dict[str, Any]:
    """The ``suitability`` of a re-processed result (``document``) of a stored run whose result is
    ``original`` (any version): the instrument's state when the sample was measured (the original's
    bead check and period, judged at its ``measured_at``) with the calibration used now (``calibration``:
    a file, None for none, True: the original's), judged on the day the sample was measured.
    A re-processed bead-check run is judged by its own new check. Needs no stored runs (the
    daemon re-processes in a worker thread); the original settings reproduce the original exactly."""
    before = original.get("suitability") or {}
    if calibration is True:
        calibration = (before.get("calibration") or {}).get("file")
    entry = before.get("bead_check")
    earlier = [] if entry is None or entry.get("run_id") == original.get("run_id") else [
        {"state": "done", "result": {"run_id": entry["run_id"], "time": entry["time"],
                                     "bead_check": {k: entry.get(k) for k in ("passed", "standard", "lot", "problems")}}}]
    measured_at = before.get("measured_at", original["time"])
    result = assess(document, calibration=calibration, bead_checks=earlier, period_h=before.get("period_h", 24.0),
                    now=_parse_time(measured_at))
    result["measured_at"] = measured_at
    if document.get("bead_check") is not None:  # its own check, made when the beads were measured
        result["bead_check"]["time"] = measured_at
    return result


def bead_check_trend(records: list[dict[str, Any]], current: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per bead check among ``records`` (stored runs, any order), oldest first: run id, time,
    instrument, standard, lot, passed, and for every checked quantity its measured value and
    acceptance range (``<quantity>`` and ``<quantity>_range`` [low, high]). ``current``: a result
    not stored yet (the run being finished), added when it is a bead check."""
    if current is not None:
        records = [r for r in records if r.get("run_id") != current.get("run_id")] + [
            {"run_id": current.get("run_id"), "state": "done", "instrument": current.get("instrument"),
             "result": current}]
    rows = []
    for record in records:
        result = record.get("result") or {}
        check = result.get("bead_check")
        if record.get("state") != "done" or check is None:
            continue
        row = {"run_id": record["run_id"], "time": result["time"], "instrument": record.get("instrument"),
               "standard": check["standard"], "lot": check["lot"], "passed": check["passed"]}
        for c in check["checks"]:
            row[c["quantity"]], row[c["quantity"] + "_range"] = c["measured"], c["limit"]
        rows.append(row)
    return sorted(rows, key=lambda r: _parse_time(r["time"]))


def bead_check_records(client: Any, *, limit: int = 50, instrument: str | None = None) -> list[dict[str, Any]]:
    """The full records of the bead-check runs among the daemon's last ``limit`` runs, newest first
    (``client``: an open :class:`exoacq.bus.ControlClient`; the ``runs`` command lists, ``run`` fetches)."""
    listed = client.request("runs", limit=limit)
    wanted = [r["run_id"] for r in listed if r["method"] == "nta" and r["state"] == "done"
              and (r.get("settings") or {}).get("bead_check") is not None
              and (instrument is None or r.get("instrument") == instrument)]
    return [client.request("run", run_id=run_id) for run_id in wanted]


def _range_cell(row: dict[str, Any], quantity: str, fmt: str) -> str:
    if quantity not in row:
        return "-"
    value, (low, high) = row[quantity], row[quantity + "_range"]
    shown = "n/a" if value is None else format(value, fmt)
    return f"{shown} [{low:{fmt}}-{high:{fmt}}]"


def format_bead_check_table(rows: list[dict[str, Any]]) -> str:
    """The bead-check trend as a text table (``exoacq runs --bead-checks``), oldest first."""
    if not rows:
        return "no bead checks recorded (run one: exoacq acquire nta --bead-check calibrations/nta/beads-100nm.toml)"
    lines = [f"{'run_id':<28} {'time (UTC)':<20} {'standard (lot)':<50} {'mean nm [limits]':<20} "
             f"{'mode nm [limits]':<20} {'conc. /mL [limits]':<30} result"]
    for r in rows:
        lines.append(f"{r['run_id']:<28} {r['time'][:19].replace('T', ' '):<20} "
                     f"{(r['standard'] + ' (' + r['lot'] + ')')[:50]:<50} "
                     f"{_range_cell(r, 'mean_diameter_nm', '.1f'):<20} {_range_cell(r, 'mode_diameter_nm', '.1f'):<20} "
                     f"{_range_cell(r, 'concentration_per_ml', '.2e'):<30} {'pass' if r['passed'] else 'FAIL'}")
    return "\n".join(lines)
