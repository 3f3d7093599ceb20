"""The NTA method's command-line verbs: ``acquire nta``, ``analyze nta``, ``calibrate nta``,
``simulate video``, the ``bench`` entries and the tracking core's ``worker``.

Registered by :class:`exoacq.nta.plugin.NTAMethod.add_cli`; every failure the
operator can act on is an ExoacqError (one line, never a traceback).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from exoacq.batch import BatchMethod, add_batch_options, run_batch_cli, single_input, split_dask_argument
from exoacq.cli_common import (add_acquire_options, add_control, positive_float as _positive_float, positive_int,
                               run_acquisition)
from exoacq.errors import ExoacqError
from exoacq.nta import DETECTORS


def add_cli(verbs: dict[str, Any]) -> None:
    runs = verbs.get("runs")
    if runs is not None:  # `exoacq runs --bead-checks`
        runs.add_argument("--bead-checks", action="store_true",
                          help="NTA bead checks among the last --limit runs: measured values against their limits")
        runs.set_defaults(views=[*runs.get_default("views"), ("bead_checks", _bead_checks)])
    export = verbs.get("export")
    if export is not None:  # `exoacq export report RUN_ID --output FILE`
        p = export.add_parser("report", help="a stored NTA run's HTML report, with who ran it and who approved it")
        add_control(p)
        p.add_argument("run_id")
        p.add_argument("--output", type=Path, required=True, help="the HTML file to write")
        p.set_defaults(func=cmd_export_report)
    p = verbs["acquire"].add_parser("nta", help="NTA: size distribution and concentration")
    p.add_argument("--duration", type=_positive_float, default=None,
                   help="seconds of each video (default 60; with --sop, the SOP's)")
    p.add_argument("--captures", type=int, default=None, help="videos to record and average (default 5)")
    p.add_argument("--bead-check", type=Path, metavar="FILE",
                   help="this run is a bead check (system suitability) against this bead standard "
                        "(e.g. calibrations/nta/beads-100nm.toml)")
    p.add_argument("--blank", action="store_true", default=None,
                   help="this run is a buffer blank: the buffer alone (on a simulated instrument, a tube of buffer)")
    p.add_argument("--blank-run", metavar="RUN_ID",
                   help="subtract this blank run's particles (concentration and size histogram) from the result")
    add_acquire_options(p)
    p.set_defaults(func=cmd_acquire)

    p = verbs["analyze"].add_parser("nta", help="analyse recorded NTA videos offline (same code as the daemon)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="video (AVI, MOV, MP4, ...), multi-page TIFF or folder of PNG/TIFF frames; several, globs "
                        "('runs/*.avi') or folders of videos make a batch")
    add_analysis_options(p)
    p.add_argument("--json", action="store_true",
                   help="print the result document alone on stdout (a batch: one JSON document per line)")
    p.add_argument("--csv", type=Path, help="also write a NanoSight-style ExperimentSummary CSV here (a batch: one "
                                            "summary row per input)")
    p.add_argument("--report", type=Path, help="also write a self-contained HTML report here (one input)")
    add_batch_options(p)
    p.set_defaults(func=cmd_analyze)

    p = verbs["calibrate"].add_parser("nta", help="measure the detection volume from beads of known concentration")
    p.add_argument("video", type=Path, help="a video of the bead standard")
    p.add_argument("--bead-diameter-nm", type=_positive_float, required=True)
    p.add_argument("--bead-concentration-per-ml", type=_positive_float, required=True,
                   help="of the bead stock; divided by --dilution for the measured suspension")
    p.add_argument("--bead-refractive-index", type=_positive_float, default=1.59, help="default: polystyrene")
    p.add_argument("--bead-lot", default="", help="lot number of the standard")
    p.add_argument("--laser-power-mw", type=_positive_float, required=True, help="laser power of the recording")
    p.add_argument("--instrument", default="unnamed instrument", help="which instrument this calibrates")
    p.add_argument("--output", type=Path, required=True, help="calibration file to write (TOML)")
    add_analysis_options(p)
    p.set_defaults(func=cmd_calibrate)

    p = verbs["simulate"].add_parser("video", help="an NTA video of simulated particles with a known truth")
    p.add_argument("output", type=Path, help="output .avi (uncompressed 8-bit, as NTA instruments record)")
    p.add_argument("--frames", type=int, default=450)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=_positive_float, default=25.0)
    p.add_argument("--diameter-nm", type=_positive_float, default=100.0)
    p.add_argument("--concentration-per-ml", type=_positive_float, default=3e8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_simulate)

    bench = verbs["bench"]
    b = bench.add_parser("locate", help="NTA detection speed and accuracy: exoacq vs trackpy.locate")
    b.add_argument("--frames", type=int, default=20, help="frames per case (default %(default)s)")
    b.add_argument("--json", action="store_true", help="JSON on stdout (the only output format)")
    b.set_defaults(func=cmd_bench, benchmark="locate")
    b = bench.add_parser("realtime", help="the daemon with a simulated NTA camera: drops and latency")
    b.add_argument("--width", type=positive_int, default=1280)
    b.add_argument("--height", type=positive_int, default=1024)
    b.add_argument("--fps", type=_positive_float, default=30.0)
    b.add_argument("--duration", type=_positive_float, default=30.0)
    b.add_argument("--workers", type=positive_int, default=1)
    b.add_argument("--camera", choices=("replay", "simulated"), default="replay",
                   help="replay (default): the simulated camera's frames rendered before the capture and played "
                        "at the frame rate, costing the host what a real camera does (a copy of each frame); "
                        "simulated: rendered during the capture (~0.6 of a core at 1280x1024, 30 frames/s)")
    b.add_argument("--console", action="store_true",
                   help="attach the operator's console (exoacq web and a headless chromium on the live page) "
                        "and report what it drew")
    b.add_argument("--console-nice", type=int, default=None, metavar="N",
                   help="the console's CPU priority below the daemon's (nice increment 0-19; default 19, as "
                        "exoacq web's own: a viewer yields to the acquisition; 0: the same priority)")
    b.add_argument("--json", action="store_true", help="JSON on stdout (the only output format)")
    b.set_defaults(func=cmd_bench, benchmark="realtime")
    b = bench.add_parser("analyze", help="`exoacq analyze nta` against a plain trackpy pipeline that finds the same "
                                         "tracks, in the process and as commands, on the video and on a lossless "
                                         "FFV1 copy of it")
    b.add_argument("video", type=Path)
    add_analysis_options(b)
    b.add_argument("--no-ffv1", dest="ffv1", action="store_false",
                   help="only the video as given (no lossless FFV1 copy of it)")
    b.add_argument("--repeat", type=int, default=1,
                   help="runs of each pipeline (interleaved); the medians are reported (default %(default)s)")
    b.add_argument("--json", action="store_true", help="JSON on stdout (the only output format)")

    def bench_analyze(args: argparse.Namespace) -> int:  # exoacq.nta.bench_analyze, imported when it runs
        from exoacq.nta.bench_analyze import cmd_bench_analyze
        return cmd_bench_analyze(args)
    b.set_defaults(func=bench_analyze, benchmark="analyze")
    b = bench.add_parser("batch", help="`analyze nta --dask`: the same simulated videos on 1 and 2 Dask workers")
    b.add_argument("--videos", type=int, default=None, help="videos to analyse (default 8)")
    b.add_argument("--frames", type=int, default=None, help="frames per video (default 300)")
    b.add_argument("--width", type=int, default=None, help="default 640")
    b.add_argument("--height", type=int, default=None, help="default 480")
    b.add_argument("--json", action="store_true", help="JSON on stdout (the only output format)")
    b.set_defaults(func=cmd_bench_batch)
    b = bench.add_parser("accuracy", help="NTA sizes and concentrations of simulated samples against their truth")
    b.add_argument("--cases", default="all",
                   help="comma-separated case names, or 'all' (default); `--cases list` prints them")
    b.add_argument("--simulator", choices=["exoacq", "emccd", "both"], default="both",
                   help="exoacq's own simulated camera, the independent EMCCD one, or both (default)")
    b.add_argument("--captures", type=int, default=2, help="captures per sample (default %(default)s)")
    b.add_argument("--capture-s", type=_positive_float, default=60.0, help="seconds per capture (default %(default)s)")
    b.add_argument("--json", action="store_true", help="JSON on stdout (the only output format)")
    b.set_defaults(func=cmd_bench, benchmark="accuracy")

    p = verbs["exoacq"].add_parser("worker", help="run a locate worker of an NTA tracking core (this or another host)")
    p.add_argument("--frames", required=True, help="the instrument's tracking frames endpoint (`exoacq status --json`)")
    p.add_argument("--features", required=True, help="the instrument's tracking features endpoint")
    from exoacq.cli_common import add_client_keys
    add_client_keys(p)  # a daemon with CurveZMQ keys: an authorised operator's pair
    p.add_argument("--detector", choices=DETECTORS, default=None,
                   help="compile only this detector before serving (the instrument's settings.detector); "
                        "default: both")
    p.set_defaults(func=cmd_worker)


def cmd_acquire(args: argparse.Namespace) -> int:
    params = {"duration_s": args.duration, "captures": args.captures, "blank": args.blank,
              "blank_run": args.blank_run}
    if args.bead_check is not None:  # a local file by its absolute path; else as given (the project's)
        params["bead_check"] = str(args.bead_check.resolve() if args.bead_check.exists() else args.bead_check)
    return run_acquisition(args, "nta", {k: v for k, v in params.items() if v is not None})


def add_analysis_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fps", type=_positive_float, help="frame rate (default: the container's)")
    p.add_argument("--pixel-size-um", type=_positive_float, help="object-plane pixel size (required unless in --calibration)")
    p.add_argument("--temperature-c", type=float, help="sample temperature (default 25 C, with a warning)")
    p.add_argument("--viscosity-mpa-s", type=_positive_float, help="medium viscosity (default: water, IAPWS 2008)")
    p.add_argument("--exposure-ms", type=float,
                   help="exposure, for the motion-blur model (default: the blur is measured from the tracks)")
    p.add_argument("--dilution", type=_positive_float, default=1.0)
    p.add_argument("--calibration", type=Path, help="detection-volume calibration (TOML) for concentrations")
    p.add_argument("--invert", action="store_true",
                   help="dark particles on a light background (bright field: no light-sheet depth correction)")
    p.add_argument("--no-volume-correction", dest="volume_correction", action="store_false",
                   help="report the detected size distribution without the light-sheet detection-depth correction")
    p.add_argument("--feature-diameter-px", type=int, default=11, help="odd (default %(default)s)")
    p.add_argument("--minmass", type=float, default=None,
                   help="detection threshold, overriding the automatic one (default: from each video's own noise, "
                        "see --false-detections-per-frame)")
    p.add_argument("--false-detections-per-frame", type=_positive_float, default=None,
                   help="automatic threshold: NOISE_MARGIN x the mass that this video's noise exceeds this often "
                        "per frame (default 0.5)")
    p.add_argument("--min-track-length", type=int, default=None,
                   help="frames (default: chosen from the data's localisation error, 13 or more)")
    p.add_argument("--search-range-px", type=_positive_float,
                   help="link search range (default: chosen from the first 100 frames' tracks, at most that of "
                        "--min-diameter-nm)")
    p.add_argument("--min-diameter-nm", type=_positive_float, default=30.0,
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
    if args.minmass is not None and not args.minmass >= 0:
        raise ExoacqError(f"--minmass {args.minmass:g}: must be >= 0", code="usage")
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


def threshold_record(threshold: dict[str, Any]) -> dict[str, Any]:
    """The [optics] threshold fields of a calibration: the rule and its value on the calibration video."""
    record = {"minmass": threshold["minmass"], "threshold_rule": threshold["rule"]}
    if threshold["rule"] == "noise":
        record |= {"false_detections_per_frame": threshold["false_detections_per_frame"],
                   "noise_margin": threshold["margin"]}
    return record


def cmd_calibrate(args: argparse.Namespace) -> int:
    from exoacq.nta.calibration import BeadStandard, NTAOptics, block_standard_error, nta_calibration_text
    if args.calibration:
        raise ExoacqError("calibrate measures a calibration: --calibration does not apply", code="usage")
    summary, params, _ = analyze_with_progress(args, [args.output])
    per_frame = summary["features_per_frame"]
    in_cell_per_ml = args.bead_concentration_per_ml / args.dilution
    crowding = summary["crowding_correction"] or 1.0  # merged close features counted back
    ppf = float(sum(per_frame) / len(per_frame)) * crowding
    # blocks of ~2 s: the light sheet's population renews as beads diffuse through it
    block = max(1, round(2.0 * params.frame_rate_hz))
    volume_nl = ppf / in_cell_per_ml * 1e6
    uncertainty_nl = block_standard_error(per_frame, block) * crowding / in_cell_per_ml * 1e6
    text = nta_calibration_text(
        volume_nl=volume_nl, uncertainty_nl=uncertainty_nl, frames=len(per_frame),
        relative_detection_depth=(summary.get("detection") or {}).get("mean_relative_depth"),
        optics=NTAOptics(pixel_size_um=params.pixel_size_um, frame_rate_hz=params.frame_rate_hz,
                         exposure_ms=params.exposure_ms or 0.0, laser_power_mw=args.laser_power_mw,
                         feature_diameter_px=params.feature_diameter_px, **threshold_record(summary["threshold"])),
        standard=BeadStandard(description=f"{args.bead_diameter_nm:g} nm beads, "
                                          f"{args.bead_concentration_per_ml:.4g} /mL stock, dilution {args.dilution:g}",
                              diameter_nm=args.bead_diameter_nm, refractive_index=args.bead_refractive_index,
                              lot=args.bead_lot),
        instrument=args.instrument,
        method=f"mean particles per frame (merged close features counted back) over {len(per_frame)} frames "
               f"of {args.video.name} / bead concentration in the cell")
    args.output.write_text(text, encoding="utf-8")
    measured = summary["size_nm"]["mean"]
    print(f"detection volume {volume_nl:.4g} +/- {uncertainty_nl:.2g} nL ({ppf:.1f} particles/frame) -> {args.output}")
    if measured is not None and abs(measured / args.bead_diameter_nm - 1) > 0.15:
        print(f"warning: the beads measure {measured:.0f} nm, not {args.bead_diameter_nm:g} nm: check the "
              "optics settings and the standard before using this calibration", file=sys.stderr)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from exoacq.nta.simulate import write_simulated_video

    truth = write_simulated_video(args.output, frames=args.frames, width=args.width, height=args.height,
                                  frame_rate_hz=args.fps, diameter_nm=args.diameter_nm,
                                  concentration_per_ml=args.concentration_per_ml, seed=args.seed)
    print(json.dumps(truth))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from exoacq.nta import bench

    if args.benchmark == "locate":
        from exoacq.nta.locate_bench import bench_locate
        result = bench_locate(frames=args.frames)
    elif args.benchmark == "realtime":
        if not (8 <= args.width <= 16384 and 8 <= args.height <= 16384):
            raise ExoacqError(f"--width {args.width} --height {args.height}: the simulated camera is 8..16384 "
                              "pixels each way", code="usage")
        result = bench.bench_realtime(width=args.width, height=args.height, fps=args.fps,
                                      duration_s=args.duration, workers=args.workers, console=args.console,
                                      console_nice=args.console_nice, camera=args.camera)
    elif args.benchmark == "accuracy":
        from exoacq.nta.accuracy import bench_accuracy, default_matrix
        from exoacq.client import StatusLine
        matrix = {c.name: c for c in default_matrix()}
        if args.cases == "list":
            print("\n".join(matrix))
            return 0
        names = list(matrix) if args.cases == "all" else [n.strip() for n in args.cases.split(",") if n.strip()]
        unknown = [n for n in names if n not in matrix]
        if unknown or not names:
            raise ExoacqError(f"--cases: unknown case {', '.join(unknown) or '(none)'}; `--cases list` shows them",
                              code="usage")
        if args.captures < 1:
            raise ExoacqError(f"--captures {args.captures}: must be >= 1", code="usage")
        status = StatusLine()
        try:
            simulators = ("exoacq", "emccd") if args.simulator == "both" else (args.simulator,)
            result = bench_accuracy([matrix[n] for n in names], simulators=simulators, capture_s=args.capture_s,
                                    captures=args.captures, progress=lambda message: status.message(message))
        finally:
            status.close()
    else:
        from exoacq.nta.video import open_video
        params, _ = analysis_parameters(args, open_video(bench.require_video(args.video)))
        result = bench.bench_analyze(args.video, params)
    print(json.dumps(result))
    return 0


def cmd_bench_batch(args: argparse.Namespace) -> int:
    from exoacq.nta.bench_batch import bench_batch

    sizes = {k: v for k, v in (("videos", args.videos), ("frames", args.frames), ("width", args.width),
                               ("height", args.height)) if v is not None}
    print(json.dumps(bench_batch(**sizes)))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from exoacq.cli_common import client_keys
    from exoacq.nta.worker import detectors_to_warm, serve
    serve(args.frames, args.features, keys=client_keys(args), detectors=detectors_to_warm(args.detector))
    return 0


def _bead_checks(client: Any, args: argparse.Namespace) -> int:
    """``exoacq runs --bead-checks``: the bead checks and their trend (exoacq.nta.suitability)."""
    from exoacq.nta.suitability import bead_check_records, bead_check_trend, format_bead_check_table

    rows = bead_check_trend(bead_check_records(client, limit=args.limit))
    print(json.dumps(rows) if args.json else format_bead_check_table(rows))
    return 0


def cmd_export_report(args: argparse.Namespace) -> int:
    """``exoacq export report RUN_ID --output FILE``: a stored NTA run's HTML report as it stands now,
    with who ran it and who approved it (the report a SOP's export step writes at the run's end
    can only say "not approved yet")."""
    from exoacq.audit import signature_lines
    from exoacq.bus import ControlClient
    from exoacq.cli_common import client_keys
    from exoacq.nta.export import write_html_report

    if not args.output.resolve().parent.is_dir():
        raise ExoacqError(f"cannot write {args.output}: no folder {args.output.resolve().parent}", code="usage")
    with ControlClient(args.control, keys=client_keys(args)) as client:
        record = client.request("run", run_id=args.run_id)
    result = record.get("result")
    if record["method"] != "nta" or not result:
        raise ExoacqError(f"run {args.run_id} is {'an ' + record['method'] if record['method'] != 'nta' else 'a'} "
                          f"run {'without a result' if not result else ''}: only a stored NTA run with a result has "
                          "an HTML report", code="no_report")
    volume = result.get("detection_volume") or {}
    calibration = {"detection_volume_nl": volume.get("nl"), "source": volume.get("source")} if volume else None
    try:
        write_html_report(args.output, result.get("captures") or [result], sample=record["sample"],
                          settings=result.get("settings") or {}, calibration=calibration,
                          suitability=result.get("suitability"), bead_check=result.get("bead_check"),
                          signatures=signature_lines(record))
    except OSError as exc:
        raise ExoacqError(f"cannot write {args.output}: {exc.strerror}") from None
    print(f"run {args.run_id} (result version {record['current_version']}): report -> {args.output}")
    return 0
