"""Re-processing a stored NTA run: its kept videos analysed again, its result document rebuilt.

A lab changes a setting (the detection threshold, the minimum track length)
or a calibration and analyses the raw data it kept, as NanoSight and ZetaView
users re-process their recorded videos. Each capture's video
(:mod:`exoacq.nta.video_store`) goes through the tracking core's own code:
the same detector (:func:`exoacq.nta.parameters.locate_features`), the same
:class:`StreamingTracker` fed the frames the live tracking core received (a
frame the live core dropped is skipped: it ended the tracks there too), the
capture's measured mean temperature set before the summary as the live linker
does (:meth:`exoacq.nta.tracker.Linker.maybe_finish`), then the same
:func:`exoacq.nta.result_document.build_result` with the run's acquisition
settings and counters. With no overrides the new document equals the stored
one in every number (only ``time``, file paths and ``reprocessed`` differ).

Overrides (``overrides``; one-line ExoacqError for anything else):
``minmass``, ``min_track_length`` (None: chosen from the data),
``feature_diameter_px``, ``search_range_px`` (None: chosen from the data up to
the range of ``min_diameter_nm``), ``min_diameter_nm``, ``detector``,
``calibration`` (a calibration file: its detection volume and detection depth;
it must have been measured with the run's optics) or ``detection_volume_nl``.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from exoacq.bus import dumps, loads
from exoacq.errors import ConfigError, ExoacqError
from exoacq.nta import DETECTORS, LEAST_MINMASS, MIN_DIAMETER_NM, SEARCH_RANGE_PX
from exoacq.nta.analysis import StreamingTracker
from exoacq.nta.parameters import TrackingParameters, locate_features, search_range_px
from exoacq.nta.result_document import build_result
from exoacq.nta.tracker import write_tracks
from exoacq.nta.video_store import FRAMES_FILE, capture_folder, kept_frames, kept_video_path

OVERRIDES = ("minmass", "min_track_length", "feature_diameter_px", "search_range_px", "min_diameter_nm",
             "detector", "calibration", "detection_volume_nl")


#: Plausible ranges of the numeric overrides: analyze nta's, and a detection volume in nL (a light sheet under a
#: camera's field holds 1e-6 to 1e3 nL).
OVERRIDE_RANGES = {"search_range_px": SEARCH_RANGE_PX, "min_diameter_nm": MIN_DIAMETER_NM,
                   "detection_volume_nl": (1e-6, 1e3)}


def _number(key: str, value: Any, *, integer: bool = False, minimum: float | None = None,
            maximum: float | None = None, above: float | None = None) -> float | int:
    """A number from JSON or from the command line (``--set minmass=500`` may arrive as a string)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ExoacqError(f"override {key} = {value!r}: not a number", code="bad_override") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ExoacqError(f"override {key} = {value!r}: not a finite number", code="bad_override")
    if integer:
        if value != int(value):
            raise ExoacqError(f"override {key} = {value!r}: must be a whole number", code="bad_override")
        value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum) or \
            (above is not None and value <= above):
        bounds = f"> {above:g}" if above is not None else f"in [{minimum:g}, {maximum:g}]" if maximum is not None \
            else f">= {minimum:g}"
        raise ExoacqError(f"override {key} = {value!r}: must be {bounds}", code="bad_override")
    return value


def validate_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides, checked and in their types (a ``None`` value: chosen from the data, where allowed)."""
    if not isinstance(overrides, dict):
        raise ExoacqError(f"overrides must be a mapping of setting to value, not {overrides!r}", code="bad_override")
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ExoacqError(f"cannot override {', '.join(unknown)} when re-processing; allowed: {', '.join(OVERRIDES)}",
                          code="bad_override")
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None and key in ("min_track_length", "search_range_px"):
            out[key] = None
        elif key == "minmass":
            out[key] = float(_number(key, value, minimum=0.0))
            if 0 < out[key] < LEAST_MINMASS:  # as analyze nta's --minmass
                raise ExoacqError(f"override minmass = {value!r}: give 0 (no threshold) or at least "
                                  f"{LEAST_MINMASS:g}", code="bad_override")
        elif key == "min_track_length":
            out[key] = _number(key, value, integer=True, minimum=3, maximum=10000)
        elif key == "feature_diameter_px":
            out[key] = _number(key, value, integer=True, minimum=3, maximum=51)
            if out[key] % 2 == 0:
                raise ExoacqError(f"override feature_diameter_px = {value!r}: must be odd", code="bad_override")
        elif key in OVERRIDE_RANGES:
            low, high = OVERRIDE_RANGES[key]
            out[key] = float(_number(key, value, minimum=low, maximum=high))
        elif key == "detector":
            if value not in DETECTORS:
                raise ExoacqError(f"override detector = {value!r}; allowed: {', '.join(DETECTORS)}",
                                  code="bad_override")
            out[key] = value
        elif key == "calibration":
            if not isinstance(value, (str, Path)) or not str(value):
                raise ExoacqError(f"override calibration = {value!r}: must be a calibration file", code="bad_override")
            out[key] = str(value)
    if "calibration" in out and "detection_volume_nl" in out:
        raise ExoacqError("give the override calibration or detection_volume_nl, not both", code="bad_override")
    return out


def tracking_parameters(original: dict[str, Any], overrides: dict[str, Any]) -> TrackingParameters:
    """The run's tracking parameters (as at the start of the run: ``result.settings.tracking``) with the
    analysis overrides applied; the volume overrides are applied by :func:`_detection_volume`."""
    params = TrackingParameters(**{f.name: original[f.name] for f in dataclasses.fields(TrackingParameters)
                                   if f.name in original})
    simple = {k: overrides[k] for k in ("minmass", "min_track_length", "feature_diameter_px", "detector")
              if k in overrides}
    params = dataclasses.replace(params, **simple)
    if "minmass" in overrides:  # a threshold given, no longer the one chosen from the run's noise
        params = dataclasses.replace(params, threshold=None)
    if overrides.get("search_range_px") is not None:
        params = dataclasses.replace(params, search_range_px=overrides["search_range_px"], auto_search_range=False)
    elif "min_diameter_nm" in overrides or "search_range_px" in overrides:
        if "min_diameter_nm" not in overrides:
            raise ExoacqError("override search_range_px = None (chosen from the data) needs min_diameter_nm: "
                              "the largest range is that of the smallest particle expected", code="bad_override")
        limit = search_range_px(overrides["min_diameter_nm"], params.temperature_c, params.viscosity_mpa_s,
                                params.frame_rate_hz, params.pixel_size_um)
        params = dataclasses.replace(params, search_range_px=limit, auto_search_range=True)
    return params


def _detection_volume(params: TrackingParameters, overrides: dict[str, Any], original_source: str
                      ) -> tuple[TrackingParameters, dict[str, Any]]:
    """Parameters with the detection volume to use, and the calibration record of the new result."""
    if "calibration" in overrides:
        from exoacq.nta.calibration import check_optics, load_nta_calibration, resolve

        try:
            path = resolve(overrides["calibration"], None)
            calibration = load_nta_calibration(path)
            check_optics(calibration, path, pixel_size_um=params.pixel_size_um, frame_rate_hz=params.frame_rate_hz,
                         exposure_ms=params.exposure_ms, feature_diameter_px=params.feature_diameter_px)
        except ConfigError as exc:
            raise ExoacqError(f"override calibration: {exc}", code="bad_override") from None
        volume = calibration.result.detection_volume_nl
        params = dataclasses.replace(params, detection_volume_nl=volume,
                                     calibration_relative_depth=calibration.result.relative_detection_depth)
        expires = calibration.calibration.expires
        return params, {"file": str(path), "detection_volume_nl": volume, "source": calibration.source(path),
                        "expires": None if expires is None else expires.isoformat()}
    if "detection_volume_nl" in overrides:
        volume = overrides["detection_volume_nl"]
        params = dataclasses.replace(params, detection_volume_nl=volume, calibration_relative_depth=None)
        return params, {"file": None, "detection_volume_nl": volume,
                        "source": f"detection_volume_nl = {volume:g} nL, given at re-processing"}
    return params, {"file": None, "detection_volume_nl": params.detection_volume_nl, "source": original_source}


def track_capture(folder: Path, params: TrackingParameters, temperature_c: float, viscosity_mpa_s: float,
                  output_dir: Path) -> dict[str, Any]:
    """One capture's kept video through the tracking core's code; the linker's ``result`` event for it
    (``summary``, ``tracking``, ``frames_processed``, ``files``)."""
    tracker = StreamingTracker(params)
    options = params.locate_options()
    processed = 0
    for frame_number, tracked, frame in kept_frames(folder):
        if tracked:  # the live tracking core had this frame (a dropped one ended the tracks there)
            tracker.add_frame(frame_number, locate_features(frame, **options))
            processed += 1
    # as Linker.maybe_finish: size at the capture's measured mean temperature
    tracker.params = dataclasses.replace(tracker.params, temperature_c=temperature_c,
                                         viscosity_mpa_s=viscosity_mpa_s)
    summary = tracker.summary()
    files = write_tracks(tracker, output_dir)
    files |= {"video": str(kept_video_path(folder)), "frames": str(folder / FRAMES_FILE)}
    # the live result crossed the tracking core's socket as JSON (NaN became null): so does this one
    return loads(dumps({"frames_processed": processed, "tracking": tracker.params.to_dict(), "summary": summary,
                        "files": files}))


def reprocess_run(record: dict[str, Any], overrides: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """A new ``nta.result`` document for a stored run (``record``: the run store's full record, with
    ``result`` and ``directory``) from its kept videos, with ``overrides`` of the analysis settings of
    ``record["result"]``; tracks files under ``output_dir`` (``capture-N/``)."""
    run_id = record.get("run_id")
    result = record.get("result")
    if not result or "captures" not in result:
        raise ExoacqError(f"run {run_id} has no NTA result to re-process (state {record.get('state')})",
                          code="no_result")
    overrides = validate_overrides(overrides)
    settings = result["settings"]
    run_settings = settings["acquisition"]
    params = tracking_parameters(settings["tracking"], overrides)
    params, calibration = _detection_volume(params, overrides, result["detection_volume"]["source"])
    directory, output_dir = Path(record["directory"]), Path(output_dir)
    warnings: list[str] = []
    captures = []
    for stored in result["captures"]:
        n = stored["capture"]
        folder = capture_folder(directory, n, run_settings["captures"])
        try:
            capture = track_capture(folder, params, stored["temperature_c"], stored["viscosity_mpa_s"],
                                    output_dir / f"capture-{n}")
        except ExoacqError as exc:
            raise ExoacqError(f"run {run_id} capture {n}: {exc}", code=exc.code) from None
        if capture["frames_processed"] != stored["frames_processed"]:
            warnings.append(f"capture {n}: the kept video has {capture['frames_processed']} of the "
                            f"{stored['frames_processed']} frames the live analysis used (frames lost while "
                            "writing it): this result cannot equal the original")
        captures.append({"capture": n, **capture})
    frames = result["frames"]
    acquisition = {"frames_planned": frames.get("planned"), "frames_acquired": frames.get("acquired", 0),
                   "frames_dropped": frames.get("dropped", 0),
                   "frames_dropped_by": frames.get("dropped_by", {"camera": 0, "tracker": 0}),
                   "video_frames_lost": frames.get("video_lost", 0)}
    document = build_result(
        run_id=result["run_id"], schema=result["schema"], instrument=result["instrument"],
        complete=result["complete"], run_settings=run_settings, captures=captures, acquisition=acquisition,
        tracking=params.to_dict(), instruments=settings["instruments"],
        detection_volume_source=calibration["source"])
    document["warnings"] += warnings
    document["reprocessed"] = {"from_run": result["run_id"], "from_version": record.get("version", record.get("current_version")),
                               "overrides": overrides, "calibration": calibration}
    _reassess(record, overrides, document)
    return loads(dumps(document))


def _reassess(record: dict[str, Any], overrides: dict[str, Any], document: dict[str, Any]) -> None:
    """A re-processed bead check judged again; the suitability of the measurement carried over,
    with the calibration now used (exoacq.nta.suitability.reassess)."""
    from exoacq.nta.suitability import evaluate_bead_check, reassess

    original = record.get("result") or {}
    if (record.get("settings") or {}).get("bead_check") is not None:
        document["bead_check"] = evaluate_bead_check(document, record["settings"]["bead_check"])
    if original.get("suitability") is not None:
        calibration = (document["reprocessed"]["calibration"]["file"] if "calibration" in overrides
                       else None if "detection_volume_nl" in overrides else True)
        document["suitability"] = reassess(document, original, calibration=calibration)
        document["warnings"].extend(document["suitability"]["flags"])
