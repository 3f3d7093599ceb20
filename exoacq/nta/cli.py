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

from exoacq.batch import add_batch_options
from exoacq.cli_common import (add_acquire_options, add_control, float_in, positive_float as _positive_float,
                               positive_int, run_acquisition)
from exoacq.errors import ExoacqError
from exoacq.nta.cli_analyze import add_analysis_options, analyze_with_progress, cmd_analyze
from exoacq.nta.worker_options import add_worker_options, detectors_to_warm


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
    p.add_argument("--bead-diameter-nm", type=float_in(1.0, 1e5, "nm"), required=True)
    p.add_argument("--bead-concentration-per-ml", type=float_in(1e3, 1e16, "/mL"), required=True,
                   help="of the bead stock; divided by --dilution for the measured suspension")
    p.add_argument("--bead-refractive-index", type=float_in(1.0, 4.0), default=1.59, help="default: polystyrene")
    p.add_argument("--bead-lot", default="", help="lot number of the standard")
    p.add_argument("--laser-power-mw", type=float_in(1e-3, 1e5, "mW"), required=True,
                   help="laser power of the recording")
    p.add_argument("--instrument", default="unnamed instrument", help="which instrument this calibrates")
    p.add_argument("--output", type=Path, required=True, help="calibration file to write (TOML)")
    add_analysis_options(p)
    p.set_defaults(func=cmd_calibrate)

    p = verbs["simulate"].add_parser("video", help="an NTA video of simulated particles with a known truth")
    p.add_argument("output", type=Path, help="output .avi (uncompressed 8-bit, as NTA instruments record)")
    p.add_argument("--frames", type=int, default=450)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=float_in(0.1, 1e4, "frames/s"), default=25.0)
    p.add_argument("--diameter-nm", type=float_in(1.0, 1e5, "nm"), default=100.0)
    p.add_argument("--concentration-per-ml", type=float_in(1e3, 1e14, "/mL"), default=3e8)
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
    b.add_argument("--fps", type=float_in(0.1, 1e4, "frames/s"), default=30.0)
    b.add_argument("--duration", type=float_in(0.1, 86400.0, "s"), default=30.0)
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
    b.add_argument("--capture-s", type=float_in(5.0, 3600.0, "s"), default=60.0,
                   help="seconds per capture (default %(default)s)")
    b.add_argument("--json", action="store_true", help="JSON on stdout (the only output format)")
    b.set_defaults(func=cmd_bench, benchmark="accuracy")

    p = verbs["exoacq"].add_parser("worker", help="run a locate worker of an NTA tracking core (this or another host)")
    add_worker_options(p)
    from exoacq.cli_common import add_client_keys
    add_client_keys(p)  # a daemon with CurveZMQ keys: an authorised operator's pair
    p.set_defaults(func=cmd_worker)


def cmd_acquire(args: argparse.Namespace) -> int:
    params = {"duration_s": args.duration, "captures": args.captures, "blank": args.blank,
              "blank_run": args.blank_run}
    if args.bead_check is not None:  # a local file by its absolute path; else as given (the project's)
        params["bead_check"] = str(args.bead_check.resolve() if args.bead_check.exists() else args.bead_check)
    return run_acquisition(args, "nta", {k: v for k, v in params.items() if v is not None})


def threshold_record(threshold: dict[str, Any]) -> dict[str, Any]:
    """The [optics] threshold fields of a calibration: the rule and its value on the calibration video."""
    record = {"minmass": threshold["minmass"], "threshold_rule": threshold["rule"]}
    if threshold["rule"] == "noise":
        record |= {"false_detections_per_frame": threshold["false_detections_per_frame"],
                   "noise_margin": threshold["margin"]}
    return record


#: A calibration's detection volume over the field of view is the depth of the slab particles are seen in:
#: a light sheet is microns thick (~10 um on the simulated camera); outside these bounds the bead
#: concentration, the dilution or the pixel size given is wrong (by orders of magnitude).
MIN_DETECTION_DEPTH_UM, MAX_DETECTION_DEPTH_UM = 0.1, 1000.0


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
    field_um2 = params.frame_width_px * params.frame_height_px * params.pixel_size_um ** 2
    depth_um = volume_nl * 1e6 / field_um2  # 1 nL = 1e6 um^3
    if not MIN_DETECTION_DEPTH_UM <= depth_um <= MAX_DETECTION_DEPTH_UM:
        raise ExoacqError(f"{args.video}: {ppf:.3g} particles per frame at {in_cell_per_ml:.3g} /mL in the cell give "
                          f"a detection volume of {volume_nl:.3g} nL, a slab {depth_um:.3g} um deep under the "
                          f"{field_um2:.4g} um^2 field of view (a light sheet is {MIN_DETECTION_DEPTH_UM:g}-"
                          f"{MAX_DETECTION_DEPTH_UM:g} um): check --bead-concentration-per-ml, --dilution and "
                          "--pixel-size-um", code="usage")
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
    else:  # accuracy (bench analyze and bench batch have their own entries)
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
    from exoacq.nta.worker import serve
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
    from exoacq.cli_common import client_keys, refuse_data_dir_output
    from exoacq.nta.export import write_html_report

    if not args.output.resolve().parent.is_dir():
        raise ExoacqError(f"cannot write {args.output}: no folder {args.output.resolve().parent}", code="usage")
    with ControlClient(args.control, keys=client_keys(args)) as client:
        refuse_data_dir_output(args.output, client.request("status"))
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
