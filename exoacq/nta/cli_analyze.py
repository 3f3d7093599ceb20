"""``exoacq analyze nta``: its options, the tracking parameters they give, and the analysis of one
video (progress on stderr; CSV and HTML exports) or of many (exoacq.batch, here or on Dask).

Every failure the operator can act on is an ExoacqError (one line, never a traceback). Decoding
starts before the analysis's modules are imported (:func:`analyze_with_progress`).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from exoacq.batch import BatchMethod, run_batch_cli, single_input, split_dask_argument
from exoacq.cli_common import float_in
from exoacq.errors import ExoacqError
from exoacq.nta import DETECTORS, LEAST_MINMASS, MIN_DIAMETER_NM, SEARCH_RANGE_PX


def add_analysis_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fps", type=float_in(0.01, 1e5, "frames/s"), help="frame rate (default: the container's)")
    p.add_argument("--pixel-size-um", type=float_in(0.001, 100.0, "um"),
                   help="object-plane pixel size (required unless in --calibration)")
    p.add_argument("--temperature-c", type=float, help="sample temperature (default 25 C, with a warning)")
    p.add_argument("--viscosity-mpa-s", type=float_in(0.01, 1e5, "mPa s"),
                   help="medium viscosity (default: water, IAPWS 2008)")
    p.add_argument("--exposure-ms", type=float,
                   help="exposure, for the motion-blur model (default: the blur is measured from the tracks)")
    p.add_argument("--dilution", type=float_in(1e-6, 1e12), default=1.0,
                   help="dilution factor of the measured suspension: analyse reports the undiluted sample's "
                        "concentration; calibrate divides the bead stock's by it (default 1)")
    p.add_argument("--calibration", type=Path, help="detection-volume calibration (TOML) for concentrations")
    p.add_argument("--invert", action="store_true",
                   help="dark particles on a light background (bright field: no light-sheet depth correction)")
    p.add_argument("--no-volume-correction", dest="volume_correction", action="store_false",
                   help="report the detected size distribution without the light-sheet detection-depth correction")
    p.add_argument("--feature-diameter-px", type=int, default=11, help="odd (default %(default)s)")
    p.add_argument("--minmass", type=float, default=None,
                   help="detection threshold, overriding the automatic one (default: from each video's own noise, "
                        "see --false-detections-per-frame)")
    p.add_argument("--false-detections-per-frame", type=float_in(1e-6, 1000.0), default=None,
                   help="automatic threshold: NOISE_MARGIN x the mass that this video's noise exceeds this often "
                        "per frame (default 0.5)")
    p.add_argument("--min-track-length", type=int, default=None,
                   help="frames (default: chosen from the data's localisation error, 13 or more)")
    p.add_argument("--search-range-px", type=float_in(*SEARCH_RANGE_PX, "px"),
                   help="link search range (default: chosen from the first 100 frames' tracks, at most that of "
                        "--min-diameter-nm)")
    p.add_argument("--min-diameter-nm", type=float_in(*MIN_DIAMETER_NM, "nm"), default=30.0,
                   help="smallest expected particle: the largest search range (default %(default)s)")
    p.add_argument("--detector", choices=DETECTORS, default="fast")


def analysis_parameters(args: argparse.Namespace, video) -> tuple[Any, list[str]]:
    """TrackingParameters for an offline analysis from the command line; with warnings."""
    from exoacq.nta.calibration import check_optics, load_nta_calibration
    from exoacq.nta.parameters import TrackingParameters

    warnings = []
    fps = args.fps or video.fps
    if fps is None:
        raise ExoacqError(f"{video.path} has no frame rate: give --fps", code="usage")
    calibration = load_nta_calibration(args.calibration) if args.calibration else None
    pixel = args.pixel_size_um or (calibration.optics.pixel_size_um if calibration else None)
    if pixel is None:
        raise ExoacqError("--pixel-size-um is required: the object-plane size of one pixel (um)", code="usage")
    if args.feature_diameter_px < 3 or args.feature_diameter_px % 2 == 0:
        raise ExoacqError(f"--feature-diameter-px {args.feature_diameter_px}: must be odd and >= 3", code="usage")
    if args.min_track_length is not None and args.min_track_length < 3:
        raise ExoacqError(f"--min-track-length {args.min_track_length}: must be >= 3 frames", code="usage")
    frames = getattr(video, "frame_count", None)
    needed = args.min_track_length or 3
    if frames is not None and frames < needed:
        raise ExoacqError(f"{video.path}: no frames to analyse" if frames == 0 else
                          f"{video.path}: {frames} frame(s): too few frames to track (a track needs {needed} or more)")
    side = 2 * args.feature_diameter_px  # a feature's disc, away from the edges the detector leaves out
    if min(video.width, video.height) < side:
        raise ExoacqError(f"{video.path}: frames of {video.width} x {video.height} pixels: too small to find "
                          f"features of {args.feature_diameter_px} px (--feature-diameter-px) in them; "
                          f"need {side} x {side} or more")
    exposure_ms = args.exposure_ms if args.exposure_ms is not None else getattr(video, "exposure_ms", None)
    if exposure_ms is not None and not 0 <= exposure_ms <= 1000.0 / fps * (1 + 1e-9):
        raise ExoacqError(f"--exposure-ms {exposure_ms:g}: must be from 0 to the frame interval "
                          f"{1000.0 / fps:.3g} ms", code="usage")
    if args.minmass is not None and not (args.minmass == 0 or LEAST_MINMASS <= args.minmass < math.inf):
        raise ExoacqError(f"--minmass {args.minmass:g}: give 0 (no threshold) or a finite mass of at least "
                          f"{LEAST_MINMASS:g}", code="usage")
    temperature = args.temperature_c
    if temperature is None:
        temperature = 25.0
        warnings.append("no --temperature-c given: 25 C assumed (sizes scale with T / viscosity)")
    if not 0.0 < temperature < 100.0:
        raise ExoacqError(f"--temperature-c {temperature:g}: must be above 0 and below 100 C (liquid water)",
                          code="usage")
    volume = depth = None
    if calibration is not None:
        check_optics(calibration, args.calibration, pixel_size_um=pixel, frame_rate_hz=fps,
                     feature_diameter_px=args.feature_diameter_px)
        volume = calibration.result.detection_volume_nl
        depth = calibration.result.relative_detection_depth
    params = TrackingParameters.for_sample(
        frame_rate_hz=fps, exposure_ms=None if exposure_ms is None else min(exposure_ms, 1000.0 / fps),
        pixel_size_um=pixel, temperature_c=temperature,
        min_diameter_nm=args.min_diameter_nm, viscosity_mpa_s=args.viscosity_mpa_s,
        link_search_range_px=args.search_range_px, feature_diameter_px=args.feature_diameter_px,
        minmass=args.minmass, min_track_length=args.min_track_length, detection_volume_nl=volume,
        **({} if args.false_detections_per_frame is None else
           {"false_detections_per_frame": args.false_detections_per_frame}),
        dilution=args.dilution, invert=args.invert, detector=args.detector, calibration_relative_depth=depth,
        volume_correction=args.volume_correction and not args.invert,
        frame_width_px=video.width, frame_height_px=video.height)
    return params, warnings


def analyze_with_progress(args: argparse.Namespace, outputs: list[Path | None]) -> tuple[dict, Any, list[str]]:
    """Open and analyse ``args.video`` (progress on stderr); output folders are checked first.

    Decoding starts before the analysis is imported (numba, trackpy, pandas, scipy: ~2 s of one
    core), so that the first frames are decoded on the other cores meanwhile."""
    from exoacq.nta.video import open_video, start_decoding

    for output in outputs:  # before a long analysis, not after it
        if output is not None and not output.resolve().parent.is_dir():
            raise ExoacqError(f"cannot write {output}: no folder {output.resolve().parent}")
    video = open_video(args.video)
    frames = start_decoding(video)
    try:
        from exoacq.nta.offline import StderrProgress, analyze_video

        params, warnings = analysis_parameters(args, video)
        progress = StderrProgress()
        try:
            summary = analyze_video(video, params, progress=progress, frames=frames)
        finally:
            progress.close()
    finally:
        frames.close()
    return summary, params, warnings


def cmd_analyze(args: argparse.Namespace) -> int:
    from exoacq.nta.format import format_summary

    split_dask_argument(args)
    single = single_input(args.inputs, is_frame_folder) if args.dask is None else None
    if single is None:
        return analyze_batch(args)
    args.video = single
    summary, params, warnings = analyze_with_progress(args, [args.csv, args.report])
    document = analysis_document(args.video, summary, params, warnings)
    write_exports(args, document, params)
    if args.json:
        print(json.dumps(document))
    else:
        print(f"{args.video}: {summary['frames_analysed']} frames at {params.frame_rate_hz:g} frames/s")
        print(format_summary(document))
    return 0


def analysis_document(video: Path | str, summary: dict[str, Any], params: Any, warnings: list[str]) -> dict[str, Any]:
    """The ``exoacq.nta.analysis/1`` document of one video's analysis."""
    summary.pop("features_per_frame", None)
    return {"schema": "exoacq.nta.analysis/1", "video": str(video), **summary,
            "temperature_c": params.temperature_c, "viscosity_mpa_s": params.viscosity_mpa_s,
            "dilution": params.dilution, "settings": params.to_dict(),
            "warnings": warnings + summary["warnings"]}


# -- batches: many inputs, here or on Dask (exoacq.batch) ------------------------------------
#: Files of a folder that are videos (a folder of frame images is one video).
VIDEO_SUFFIXES = (".avi", ".mov", ".mp4", ".m4v", ".mkv", ".wmv", ".mpg", ".mpeg", ".npy")
BATCH_COLUMNS = ("frames_analysed", "frame_rate_hz", "size_mean_nm", "size_mode_nm", "size_sd_nm", "size_d10_nm",
                 "size_d50_nm", "size_d90_nm", "concentration_per_ml", "particles_per_frame", "tracks_total",
                 "tracks_used", "diffusion_mean_um2_s", "temperature_c", "viscosity_mpa_s", "dilution", "warnings")


def is_frame_folder(path: Path) -> bool:
    """A folder of PNG/TIFF frames (and no video files): one video, as ``open_video`` reads it."""
    from exoacq.nta.video import FRAME_SUFFIXES
    suffixes = {p.suffix.lower() for p in path.iterdir() if p.is_file()}
    return bool(suffixes & set(FRAME_SUFFIXES)) and not suffixes & set(VIDEO_SUFFIXES)


def analysis_options(args: argparse.Namespace) -> dict[str, Any]:
    """The analysis options of a command line as a plain, picklable dict (for analyse_input)."""
    probe = argparse.ArgumentParser(add_help=False)
    add_analysis_options(probe)
    return {a.dest: (str(v) if isinstance(v := getattr(args, a.dest), Path) else v) for a in probe._actions}


def analyse_input(path: str, options: dict[str, Any]) -> dict[str, Any]:
    """One video's analysis document (with ``input``), from ``analysis_options``: the batch's task,
    here or on a Dask worker. ``options["threads"]``: detection threads (default: all cores)."""
    from exoacq.nta.offline import analyze_video
    from exoacq.nta.video import open_video

    args = argparse.Namespace(**{k: v for k, v in options.items() if k != "threads"})
    if args.calibration is not None:
        args.calibration = Path(args.calibration)
    video = open_video(path)
    params, warnings = analysis_parameters(args, video)
    summary = analyze_video(video, params, threads=options.get("threads"))
    return {"input": str(path), **analysis_document(path, summary, params, warnings)}


def summary_row(document: dict[str, Any]) -> dict[str, Any]:
    size = document["size_nm"]
    return {"frames_analysed": document["frames_analysed"], "frame_rate_hz": document["settings"]["frame_rate_hz"],
            **{f"size_{k}_nm": size[k] for k in ("mean", "mode", "sd", "d10", "d50", "d90")},
            "concentration_per_ml": document["concentration_per_ml"],
            "particles_per_frame": document["particles_per_frame"], "tracks_total": document["tracks"]["total"],
            "tracks_used": document["tracks"]["used"], "diffusion_mean_um2_s": document["diffusion_um2_s"]["mean"],
            "temperature_c": document["temperature_c"], "viscosity_mpa_s": document["viscosity_mpa_s"],
            "dilution": document["dilution"], "warnings": document["warnings"]}


def describe(document: dict[str, Any]) -> str:
    def num(value: Any, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)
    size = document["size_nm"]
    return (f"{document['input']}: mean {num(size['mean'], '.1f')} nm, mode {num(size['mode'], '.1f')} nm, "
            f"D50 {num(size['d50'], '.1f')} nm, {document['tracks']['used']} tracks, "
            f"{num(document['concentration_per_ml'], '.3g')} particles/mL")


BATCH = BatchMethod(name="nta", analyse=analyse_input, suffixes=VIDEO_SUFFIXES, columns=BATCH_COLUMNS,
                    summary_row=summary_row, describe=describe, is_input_folder=is_frame_folder)


def analyze_batch(args: argparse.Namespace) -> int:
    """``analyze nta`` of many inputs, or with --dask: one document per input as each finishes."""
    if args.report is not None:
        raise ExoacqError("--report writes one video's report: give one input (a batch has --json and --csv)",
                          code="usage")
    _check_options(args)
    return run_batch_cli(BATCH, args.inputs, analysis_options(args), dask=args.dask, workers=args.workers,
                         json_lines=args.json, csv_path=args.csv)


def _check_options(args: argparse.Namespace) -> None:
    """The options' own mistakes once, before the batch, not once per input (a stand-in video at
    --fps, or the calibration's frame rate; each input is checked again with its own)."""
    from types import SimpleNamespace

    from exoacq.nta.calibration import load_nta_calibration
    fps = args.fps
    if fps is None and args.calibration is not None:
        fps = load_nta_calibration(args.calibration).optics.frame_rate_hz
    if fps is None:
        fps = min(25.0, 1000.0 / args.exposure_ms) if args.exposure_ms and args.exposure_ms > 0 else 25.0
    analysis_parameters(args, SimpleNamespace(path=Path("(options)"), fps=fps, width=640, height=480))


def write_exports(args: argparse.Namespace, document: dict[str, Any], params: Any) -> None:
    """--csv and --report of an offline analysis (one capture)."""
    from exoacq.nta.export import write_experiment_summary_csv, write_html_report

    sample = Path(args.video).name
    calibration = {"file": str(args.calibration), "detection_volume_nl": params.detection_volume_nl} \
        if args.calibration else None
    try:
        if args.csv:
            write_experiment_summary_csv(args.csv, [document], sample=sample, settings={"tracking": params.to_dict()})
        if args.report:
            write_html_report(args.report, [document], sample=sample, settings={"tracking": params.to_dict()},
                              calibration=calibration)
    except OSError as exc:
        raise ExoacqError(f"cannot write {exc.filename}: {exc.strerror}") from None
