"""The flow method's command-line verbs: ``analyze flow``, ``acquire flow``, ``calibrate flow``,
``simulate flow`` and ``bench flow``."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from exoacq.cli_common import (add_acquire_options, finite_float, float_in, positive_float, positive_int,
                               run_acquisition, seed_int)
from exoacq.errors import ExoacqError

CONTROLS = ("buffer", "unstained", "isotype", "lysed")
#: A bead further than this off the fitted scatter curve makes a calibration doubtful (a good fit: a few %).
MAX_BEAD_RESIDUAL_PERCENT = 15.0


def _marker(text: str) -> tuple[str, str]:
    name, sep, parameter = text.partition("=")
    if not sep or not name.strip() or not parameter.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: give a marker and its parameter, e.g. CD63=FL1-H")
    return name.strip(), parameter.strip()


def add_cli(verbs: dict[str, Any]) -> None:
    p = verbs["acquire"].add_parser("flow", help="nano flow cytometry: EV counts, sizes, marker-positive fractions")
    p.add_argument("--duration", type=positive_float, default=None, help="seconds of live time (default 10)")
    p.add_argument("--control-run", dest="run_control", choices=CONTROLS,
                   help="this run is a control of the sample (buffer only, unstained, isotype, detergent-lysed)")
    for kind in CONTROLS:
        p.add_argument(f"--{kind}", metavar="RUN_ID", help=f"attach the {kind} control run RUN_ID to this sample")
    add_acquire_options(p)
    p.set_defaults(func=cmd_acquire)

    p = verbs["analyze"].add_parser("flow", help="analyse an FCS file (2.0, 3.0, 3.1): counts, calibrated sizes, "
                                                 "markers, controls")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE.fcs",
                   help="the sample; with --dilution-series, one file per dilution")
    p.add_argument("--calibration", type=Path, help="a flow calibration (exoacq calibrate flow): diameters and MESF")
    p.add_argument("--gates", type=Path, help="a Gating-ML 2.0 file; its leaf gate (or --final-gate) is analysed")
    p.add_argument("--final-gate", help="the Gating-ML gate whose events are analysed")
    p.add_argument("--gate", action="append", default=[], metavar="EXPR",
                   help="a threshold gate, e.g. 'SSC-H>20' or 'Diameter:50-200' (repeatable)")
    p.add_argument("--dilution", type=positive_float, default=None,
                   help="dilution factor of the sample (default: the file's EXOACQ_DILUTION, else 1)")
    p.add_argument("--flow-rate-ul-min", type=float_in(1e-4, 1e4, "uL/min"), default=None,
                   help="sample flow rate, uL/min, for files without $VOL (concentration = events x dilution / volume)")
    p.add_argument("--trigger-threshold", type=positive_float, default=None, metavar="AU",
                   help="the trigger level in the scatter parameter's units (default: the file's, if exoacq wrote it)")
    p.add_argument("--marker", action="append", type=_marker, default=[], metavar="NAME=PARAMETER",
                   help="a marker and the parameter that measures it, e.g. CD63=FL1-H (repeatable)")
    for kind in CONTROLS:
        p.add_argument(f"--{kind}", type=Path, metavar="FILE.fcs", help=f"the {kind} control's FCS file")
    p.add_argument("--dilution-series", action="store_true",
                   help="the files are one sample at several dilutions (--dilutions, or their EXOACQ_DILUTION): "
                        "check for swarm")
    p.add_argument("--dilutions", help="comma-separated dilution of each file, for --dilution-series")
    p.add_argument("--export-fcs", type=Path, metavar="OUT.fcs",
                   help="write the events with their calibrated parameters (Diameter nm, MESF) as FCS 3.1")
    p.add_argument("--json", action="store_true", help="print the result document alone on stdout")
    p.set_defaults(func=cmd_analyze)

    p = verbs["calibrate"].add_parser("flow", help="scatter -> diameter from a size-standard bead file (Mie), "
                                                   "fluorescence -> MESF from bead ladders")
    p.add_argument("beads", type=Path, nargs="?", metavar="BEADS.fcs", help="the size-standard beads' FCS file")
    p.add_argument("--bead-set", type=Path, default=Path("calibrations/flow/beads-silica.toml"),
                   help="the beads' diameters, material and lot (default %(default)s)")
    p.add_argument("--parameter", default="SSC-H", help="the scatter parameter (default %(default)s)")
    p.add_argument("--mesf", action="append", default=[], metavar="FILE.fcs:PARAMETER:FLUOROCHROME",
                   help="an MESF ladder's FCS file, the parameter and the fluorochrome, e.g. "
                        "mesf.fcs:FL1-H:FITC (repeatable)")
    p.add_argument("--mesf-beads", type=Path, default=Path("calibrations/flow/beads-mesf.toml"),
                   help="the MESF ladder's values and lot (default %(default)s)")
    p.add_argument("--wavelength-nm", type=float_in(100.0, 3000.0, "nm"), default=488.0,
                   help="laser (default %(default)s)")
    p.add_argument("--medium-refractive-index", type=float_in(1.0, 3.0), default=1.333, help="(default %(default)s)")
    p.add_argument("--center-deg", type=float_in(0.1, 179.9, "deg"), default=90.0,
                   help="collection axis (default %(default)s)")
    p.add_argument("--half-angle-deg", type=float_in(0.1, 90.0, "deg"), default=40.0,
                   help="collection half-angle, asin(NA / n), the guess the fit starts from (default %(default)s)")
    p.add_argument("--no-geometry-fit", action="store_true", help="keep the half-angle as given; fit the gain only")
    p.add_argument("--ev-core-ri", type=float_in(1.0, 4.0), default=1.38,
                   help="EV model core index (default %(default)s)")
    p.add_argument("--ev-shell-ri", type=float_in(1.0, 4.0), default=1.48,
                   help="EV model shell index (default %(default)s)")
    p.add_argument("--ev-shell-nm", type=float_in(0.1, 1000.0, "nm"), default=5.0,
                   help="EV model shell thickness (default %(default)s)")
    p.add_argument("--min-scatter", type=finite_float, default=None, metavar="AU",
                   help="ignore bead events below this (default: twice the file's trigger threshold)")
    p.add_argument("--simulated", action="store_true",
                   help="acquire the beads (silica ladder, FITC and PE MESF ladders) on the simulated cytometer")
    p.add_argument("--seed", type=seed_int, default=None, help="of the simulation")
    p.add_argument("--valid-days", type=int, default=30,
                   help="the calibration expires after this many days (default %(default)s; 0: never)")
    p.add_argument("-o", "--output", type=Path, required=True, help="the calibration file to write (TOML)")
    p.set_defaults(func=cmd_calibrate)

    p = verbs["simulate"].add_parser("flow", help="an FCS file of a simulated nano flow acquisition")
    p.add_argument("output", type=Path, metavar="OUT.fcs")
    p.add_argument("--duration", type=float_in(0.01, 86400.0, "s"), default=10.0,
                   help="seconds of live time (default %(default)s)")
    p.add_argument("--dilution", type=float_in(1e-6, 1e12), default=100.0, help="(default %(default)s)")
    p.add_argument("--control", choices=CONTROLS, help="a control tube made from the sample")
    p.add_argument("--config", type=Path, help="take the sample from this configuration's flow instrument "
                                               "(default: the built-in EV sample)")
    p.add_argument("--seed", type=seed_int, default=None)
    p.set_defaults(func=cmd_simulate)

    b = verbs["bench"].add_parser("flow", help="pulse detection and event analysis throughput, one core (JSON)")
    b.add_argument("--seconds", type=float_in(1e-3, 3600.0, "s"), default=1.0,
                   help="of simulated trace (default %(default)s)")
    b.add_argument("--events", type=positive_int, default=2_000_000, help="events analysed (default %(default)s)")
    b.add_argument("--json", action="store_true", help="JSON on stdout (the only output format)")
    b.set_defaults(func=cmd_bench)


# -- acquire ------------------------------------------------------------------------------------
def cmd_acquire(args: argparse.Namespace) -> int:
    controls = {kind: getattr(args, kind) for kind in CONTROLS if getattr(args, kind)}
    params: dict[str, Any] = {"duration_s": args.duration, "control": args.run_control}
    if controls:
        params["controls"] = controls
    return run_acquisition(args, "flow", {k: v for k, v in params.items() if v is not None})


# -- analyze --------------------------------------------------------------------------------------
def _settings(args: argparse.Namespace) -> Any:
    """The analysis options of a command line as flow settings (validated like a configuration's)."""
    from pydantic import ValidationError

    from exoacq.flow.settings import FlowSettings
    from exoacq.flow.settings_files import check_files

    try:
        settings = FlowSettings(markers=dict(args.marker) if args.marker else {}, gate=list(args.gate),
                                calibration=str(args.calibration) if args.calibration else None,
                                gates=str(args.gates) if args.gates else None, final_gate=args.final_gate,
                                flow_rate_ul_min=args.flow_rate_ul_min)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ExoacqError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}", code="usage") from None
    check_files(settings, Path.cwd(), "command line")
    return settings


def cmd_analyze(args: argparse.Namespace) -> int:
    from exoacq.flow.format import format_analysis

    if args.final_gate and not args.gates:
        raise ExoacqError("--final-gate names a gate of --gates: give the Gating-ML file too", code="usage")
    if args.dilutions and not args.dilution_series:
        raise ExoacqError("--dilutions goes with --dilution-series (one dilution per file)", code="usage")
    settings = _settings(args)
    missing = [p for p in args.files if not p.is_file()]
    if missing:
        what = "a folder, not an FCS file" if missing[0].is_dir() else "no such file"
        raise ExoacqError(f"{missing[0]}: {what}", code="usage")
    if args.dilution_series:
        document = _series(args, settings)
        print(json.dumps(document) if args.json else _format_series(document))
        return 0
    if len(args.files) != 1:
        raise ExoacqError("give one FCS file (or several with --dilution-series)", code="usage")
    document = _analyse_one(args, settings)
    print(json.dumps(document) if args.json else format_analysis(document))
    return 0


def _analyse_one(args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    from exoacq.flow.pipeline import analyse, analysis_files, export_events, fcs_input

    calibration, gates = analysis_files(settings)
    sample = fcs_input(args.files[0], dilution=args.dilution, flow_rate_ul_min=args.flow_rate_ul_min)
    controls = {kind: fcs_input(getattr(args, kind), flow_rate_ul_min=args.flow_rate_ul_min)
                for kind in CONTROLS if getattr(args, kind)}
    threshold = args.trigger_threshold
    if threshold is None:
        from exoacq.flow.pipeline import _keyword_float
        threshold = _keyword_float(sample.keywords, "EXOACQ_TRIGGER_THRESHOLD_AU")
    document = analyse(sample, calibration=calibration, gates=gates, markers=settings.markers, controls=controls,
                       trigger_threshold_au=threshold)
    if args.export_fcs is not None:
        keywords = {k: v for k, v in sample.keywords.items() if k.startswith("EXOACQ_") or k in ("$CYT", "$SRC")}
        volume = document.get("volume_ul")
        path = export_events(args.export_fcs, sample.events, calibration, keywords=keywords,
                             volume_nl=volume * 1000.0 if volume else None)
        document["files"] = {"fcs": str(path)}
    return document


def _series(args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    from exoacq.flow.analysis import dilution_series
    from exoacq.flow.pipeline import analysis_files, fcs_input

    if len(args.files) < 2:
        raise ExoacqError("--dilution-series needs two or more files, one per dilution", code="usage")
    dilutions: list[float | None] = [None] * len(args.files)
    if args.dilutions:
        try:
            dilutions = [float(x) for x in args.dilutions.split(",")]
        except ValueError:
            raise ExoacqError(f"--dilutions {args.dilutions!r}: give numbers separated by commas", code="usage") from None
        if not all(math.isfinite(x) and x > 0 for x in dilutions):
            raise ExoacqError(f"--dilutions {args.dilutions!r}: each dilution is a finite number > 0", code="usage")
        if len(dilutions) != len(args.files):
            raise ExoacqError(f"--dilutions has {len(dilutions)} values for {len(args.files)} files", code="usage")
    calibration, gates = analysis_files(settings)
    inputs = [fcs_input(path, dilution=d, flow_rate_ul_min=args.flow_rate_ul_min)
              for path, d in zip(args.files, dilutions)]
    return dilution_series([(i.dilution, i) for i in inputs], calibration=calibration, gates=gates)


def _format_series(document: dict[str, Any]) -> str:
    verdict = "free of swarm" if document.get("swarm_free") else "NOT free of swarm"
    lines = [f"Dilution series: {verdict}"]
    for point in document.get("points", []):
        lines.append("  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in point.items()))
    lines += [f"  Warning: {w}" for w in document.get("warnings", [])]
    return "\n".join(lines)


# -- calibrate --------------------------------------------------------------------------------------
def cmd_calibrate(args: argparse.Namespace) -> int:
    from exoacq.config import resolve_file
    from exoacq.flow.calibrate import make_calibration, simulated_bead_events
    from exoacq.flow.pipeline import _keyword_float, fcs_input, levels
    from exoacq.flow.scatter import Collection, Particle
    from exoacq.flow.settings import FlowSettings

    bead_set = resolve_file(args.bead_set, Path.cwd(), what="bead set")
    mesf_set = resolve_file(args.mesf_beads, Path.cwd(), what="MESF bead set")
    if args.valid_days < 0:
        raise ExoacqError(f"--valid-days {args.valid_days}: give 0 (never expires) or a number of days", code="usage")
    collection = Collection(center_deg=args.center_deg, half_angle_deg=args.half_angle_deg)
    particle = Particle(args.ev_core_ri, args.ev_shell_ri, args.ev_shell_nm, name="EV core-shell")
    mesf: list[tuple[Any, str, str]] = []
    if args.simulated:
        if args.beads is not None or args.mesf:
            raise ExoacqError("--simulated acquires its own beads: give no bead files", code="usage")
        settings = FlowSettings()
        print("exoacq: acquiring simulated silica beads (10 s) and MESF ladders (5 s each)", file=sys.stderr)
        events, recorder = simulated_bead_events("silica", duration_s=10.0, settings=settings, seed=args.seed)
        d, channel = recorder.detector, settings.trigger_channel
        threshold = d.threshold_counts - d.baseline_counts[channel]
        detector = {"channel": channel, "baseline_counts": d.baseline_counts[channel],
                    "noise_counts": d.noise_counts[channel],
                    "volts_per_count": recorder.volts_per_count[channel]}
        for channel, fluorochrome in (("FL1", "FITC"), ("FL2", "PE")):
            ladder, _ = simulated_bead_events("mesf", duration_s=5.0, settings=settings, seed=args.seed,
                                              channel=channel)
            mesf.append((ladder, f"{channel}-H", fluorochrome))
        sources = ["simulated cytometer (exoacq.flow.simulate defaults)"]
    else:
        if args.beads is None:
            raise ExoacqError("give the size-standard beads' FCS file (or --simulated)", code="usage")
        sample = fcs_input(args.beads)
        events = sample.events
        threshold = _keyword_float(sample.keywords, "EXOACQ_TRIGGER_THRESHOLD_AU")
        channel = sample.keywords.get("EXOACQ_TRIGGER_CHANNEL")
        found = levels(sample.keywords, channel) if channel else None
        detector = None if found is None else {"channel": channel, "baseline_counts": found[0],
                                               "noise_counts": found[1]}
        scale = _keyword_float(sample.keywords, f"EXOACQ_VOLTS_PER_COUNT_{channel}") if channel else None
        if detector is not None and scale:
            detector["volts_per_count"] = scale
        sources = [str(args.beads)]
        for spec in args.mesf:
            path, _, rest = spec.partition(":")
            parameter, _, fluorochrome = rest.partition(":")
            if not path or not parameter or not fluorochrome:
                raise ExoacqError(f"--mesf {spec!r}: give FILE.fcs:PARAMETER:FLUOROCHROME", code="usage")
            mesf.append((fcs_input(Path(path)).events, parameter, fluorochrome))
            sources.append(path)
    min_value = args.min_scatter if args.min_scatter is not None else 2.0 * (threshold or 0.0)
    calibration = make_calibration(scatter_events=events, scatter_parameter=args.parameter, bead_set_path=bead_set,
                                   wavelength_nm=args.wavelength_nm,
                                   medium_refractive_index=args.medium_refractive_index, collection=collection,
                                   particle=particle, fit_geometry=not args.no_geometry_fit, min_value=min_value,
                                   mesf=mesf, mesf_set_path=mesf_set if mesf else None, sources=sources,
                                   validity_days=args.valid_days or None, detector=detector,
                                   names={"scatter": str(args.bead_set), "mesf": str(args.mesf_beads)})
    calibration.provenance["command"] = " ".join(["exoacq", *sys.argv[1:]])
    try:
        args.output.write_text(calibration.to_toml(), encoding="utf-8")
    except OSError as exc:
        raise ExoacqError(f"cannot write {args.output}: {exc.strerror}", code="usage") from None
    s = calibration.scatter
    print(f"{args.output}: {s.parameter} = {s.gain_au_per_nm2:.4g} a.u./nm^2 x Mie cross-section "
          f"(half-angle {s.collection.half_angle_deg:.1f} deg{' fitted' if s.geometry_fitted else ''}); "
          f"bead residuals {', '.join(f'{r:+.1f}' for r in s.residuals_percent)} %")
    for parameter, f in calibration.fluorescence.items():
        print(f"  {parameter}: log10 MESF = {f.intercept:.4f} + {f.slope:.4f} log10 a.u. ({f.fluorochrome})")
    worst = max(s.residuals_percent, key=abs, default=0.0)
    if abs(worst) > MAX_BEAD_RESIDUAL_PERCENT:
        print(f"warning: a bead lies {worst:+.1f} % off the fitted Mie curve (more than "
              f"{MAX_BEAD_RESIDUAL_PERCENT:g} %): check that the file holds the bead set, and the optics given "
              "(--wavelength-nm, --medium-refractive-index); sizes from this calibration are doubtful", file=sys.stderr)
    return 0


# -- simulate --------------------------------------------------------------------------------------
def cmd_simulate(args: argparse.Namespace) -> int:
    from exoacq.flow.pipeline import export_events, level_keywords
    from exoacq.flow.settings import FlowSettings, FlowSimulation
    from exoacq.flow.simulated import SimulatedTube, record

    simulation = FlowSimulation(seed=args.seed)
    settings = FlowSettings()
    if args.config is not None:
        from exoacq.config import load_config
        config = load_config(args.config)
        flow = [i for i in config.instruments.values() if i.method == "flow"]
        if not flow:
            raise ExoacqError(f"{args.config}: no flow instrument", code="usage")
        simulation, settings = flow[0].sample, flow[0].options
    tube = SimulatedTube(simulation)
    tube.load(dilution=args.dilution, control=args.control)
    recorder = record(tube.simulator, args.duration, settings)
    d = recorder.detector
    threshold = d.threshold_counts - d.baseline_counts[d.trigger.channel]
    rate = tube.cytometer.flow_rate_ul_min
    keywords = {"$CYT": "exoacq simulated nano flow cytometer", "EXOACQ_SAMPLE": "simulated",
                "EXOACQ_DILUTION": repr(float(args.dilution)), "EXOACQ_CONTROL": args.control or "sample",
                "EXOACQ_LIVE_TIME_S": repr(recorder.live_time_s), "EXOACQ_FLOW_RATE_UL_MIN": repr(rate),
                "EXOACQ_TRIGGER_CHANNEL": d.trigger.channel, "EXOACQ_TRIGGER_THRESHOLD_AU": repr(float(threshold)),
                **level_keywords(d, recorder.volts_per_count)}
    export_events(args.output, recorder.events(), None, keywords=keywords,
                  volume_nl=rate * recorder.live_time_s / 60.0 * 1000.0)
    print(f"{args.output}: {recorder.events_total} events in {recorder.live_time_s:g} s "
          f"(dilution x{args.dilution:g}, {args.control or 'sample'})")
    return 0


# -- bench ---------------------------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    from exoacq.flow.bench import bench_flow
    print(json.dumps(bench_flow(seconds=args.seconds, n_events=args.events)))
    return 0
