"""The DLS method's command-line verbs: ``analyze dls``, ``acquire dls`` and ``bench correlator``."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from exoacq.batch import BatchMethod, add_batch_options, run_batch_cli, single_input, split_dask_argument
from exoacq.cli_common import add_acquire_options, finite_float, float_in, positive_float, run_acquisition
from exoacq.errors import ExoacqError


def add_cli(verbs: dict[str, Any]) -> None:
    p = verbs["acquire"].add_parser("dls", help="DLS: Z-average, PDI and size distributions")
    p.add_argument("--duration", type=positive_float, default=None, help="seconds of each sub-run (default 10)")
    p.add_argument("--runs", type=int, default=None, help="sub-runs, analysed together with dust rejection (default 3)")
    p.add_argument("--angle", type=float_in(0.1, 179.9, "deg"), default=None,
                   help="scattering angle, degrees (default: the detector's)")
    add_acquire_options(p)
    p.set_defaults(func=cmd_acquire)

    p = verbs["analyze"].add_parser("dls", help="analyse a correlator file (ALV .ASC, correlator.com .SIN) or "
                                                "photons (PicoQuant .ptu)")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="several, globs or folders of such files make a batch (one document per file)")
    p.add_argument("--particle-refractive-index", type=float_in(1.0, 4.0), default=1.59,
                   help="for the Mie volume and number distributions (default %(default)s: polystyrene)")
    p.add_argument("--fit-fraction", type=fit_fraction, default=0.1, metavar="F",
                   help="cumulant fit (and correlation check) down to this fraction of the intercept, "
                        "between 0 and 1 (default %(default)s, ISO 22412: ~0.1)")
    # a .ptu file records photons only; correlator files record their own optics and temperature
    p.add_argument("--angle", type=float_in(0.1, 179.9, "deg"), help="scattering angle (degrees) of a .ptu file")
    p.add_argument("--wavelength-nm", type=float_in(100.0, 3000.0, "nm"), help="laser wavelength of a .ptu file")
    p.add_argument("--temperature-c", type=float_in(-20.0, 150.0, "C"),
                   help="sample temperature of a .ptu file (default 25 C)")
    p.add_argument("--medium-refractive-index", type=float_in(1.0, 3.0), default=None,
                   help="of a .ptu file's medium (default 1.332)")
    p.add_argument("--json", action="store_true",
                   help="print the result document alone on stdout (a batch: one JSON document per line)")
    p.add_argument("--csv", type=Path, help="a batch: write one summary row per file here")
    add_batch_options(p)
    p.set_defaults(func=cmd_analyze)

    b = verbs["bench"].add_parser("correlator", help="the DLS software correlator against multipletau (JSON)")
    b.add_argument("--duration", type=float_in(1e-3, 1e4, "s"), default=2.0,
                   help="seconds of photons (default %(default)s)")
    b.add_argument("--count-rate", type=float_in(1.0, 1e9, "/s"), default=5e6, help="photons/s (default %(default)g)")
    b.add_argument("--json", action="store_true", help="JSON on stdout (the only output format)")
    b.set_defaults(func=cmd_bench)


def fit_fraction(text: str) -> float:
    """The cumulant fit fraction of the intercept: a number strictly between 0 and 1."""
    value = finite_float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 1 (exclusive), e.g. 0.1")
    return value


def cmd_acquire(args: argparse.Namespace) -> int:
    params = {"duration_s": args.duration, "runs": args.runs, "angle_deg": args.angle}
    return run_acquisition(args, "dls", {k: v for k, v in params.items() if v is not None})


def cmd_analyze(args: argparse.Namespace) -> int:
    from exoacq.dls.format import format_analysis

    split_dask_argument(args, "files")
    single = single_input(args.files) if args.dask is None else None
    if single is None:
        return run_batch_cli(BATCH, args.files, analysis_options(args), dask=args.dask, workers=args.workers,
                             json_lines=args.json, csv_path=args.csv)
    if args.csv is not None:
        raise ExoacqError("--csv writes a batch's summary: give several files, a folder or a glob", code="usage")
    document = _analyse(single, analysis_options(args))
    print(json.dumps(document) if args.json else format_analysis(document))
    return 0


def _analyse(path: Path, options: dict[str, Any]) -> dict[str, Any]:
    """One file's analysis document (the same for one file and for a batch)."""
    from exoacq.dls.analysis import analyze_record

    if not path.exists():
        raise ExoacqError(f"{path}: no such file", code="usage")
    if path.suffix.lower() == ".ptu":
        record = _ptu_record(argparse.Namespace(file=path, **options))
    else:
        from exoacq.dls.io import read_dls_file
        record = read_dls_file(path)
    document = analyze_record(record, particle_refractive_index=options["particle_refractive_index"],
                              fit_fraction=options["fit_fraction"])
    if path.suffix.lower() != ".ptu":
        ignored = [f"--{name.replace('_', '-')}" for name in _PTU_OPTIONS if options.get(name) is not None]
        if ignored:
            document["warnings"] = [f"{', '.join(ignored)} not used: {path.name} records its own (they are for "
                                    ".ptu photon files)", *document.get("warnings", [])]
    return document


# -- batches: many files, here or on Dask (exoacq.batch) -------------------------------------
#: Files of a folder that are DLS inputs.
DLS_SUFFIXES = (".asc", ".sin", ".ptu")
#: What a .ptu file does not record (a correlator file records them itself).
_PTU_OPTIONS = ("angle", "wavelength_nm", "temperature_c", "medium_refractive_index")
_OPTIONS = ("particle_refractive_index", "fit_fraction", *_PTU_OPTIONS)
BATCH_COLUMNS = ("source", "measurements", "angle_deg", "wavelength_nm", "temperature_c", "z_average_nm", "pdi",
                 "intercept", "quality", "extrapolated_diameter_nm", "warnings")


def analysis_options(args: argparse.Namespace) -> dict[str, Any]:
    """The analysis options of a command line as a plain, picklable dict (for analyse_input)."""
    return {name: getattr(args, name) for name in _OPTIONS}


def analyse_input(path: str, options: dict[str, Any]) -> dict[str, Any]:
    """One file's analysis document (with ``input``): the batch's task, here or on a Dask worker."""
    return {"input": str(path), **_analyse(Path(path), options)}


def summary_row(document: dict[str, Any]) -> dict[str, Any]:
    """One row per file; a file of several angles has ``;``-separated values, one per angle."""
    measurements = document.get("measurements") or []

    def each(key: str) -> list[Any]:
        return [m.get(key) for m in measurements]
    extrapolated = document.get("extrapolated") or {}
    warnings = list(document.get("warnings") or []) + [w for m in measurements for w in m.get("warnings") or []]
    return {"source": document.get("source"), "measurements": len(measurements), "angle_deg": each("angle_deg"),
            "wavelength_nm": each("wavelength_nm"), "temperature_c": each("temperature_c"),
            "z_average_nm": each("z_average_nm"), "pdi": each("pdi"), "intercept": each("intercept"),
            "quality": [(m.get("quality") or {}).get("verdict") for m in measurements],
            "extrapolated_diameter_nm": extrapolated.get("diameter_nm"), "warnings": warnings}


def describe(document: dict[str, Any]) -> str:
    parts = []
    for m in document.get("measurements") or []:
        z, pdi = m.get("z_average_nm"), m.get("pdi")
        parts.append(f"{m['angle_deg']:g} deg: Z-average {'n/a' if z is None else format(z, '.1f')} nm, "
                     f"PDI {'n/a' if pdi is None else format(pdi, '.3f')}")
    return f"{document['input']}: " + ("; ".join(parts) or "no measurement")


BATCH = BatchMethod(name="dls", analyse=analyse_input, suffixes=DLS_SUFFIXES, columns=BATCH_COLUMNS,
                    summary_row=summary_row, describe=describe)


def _ptu_record(args: argparse.Namespace):
    """Photons from a PTU file, correlated here like a live acquisition."""
    from exoacq.dls.correlator import MultiTauCorrelator
    from exoacq.dls.ptu import read_ptu
    from exoacq.dls.record import Correlation, DLSRecord

    if args.angle is None or args.wavelength_nm is None:
        raise ExoacqError(f"{args.file}: a PTU file does not record the optics: give --angle and --wavelength-nm",
                          code="usage")
    temperature_c = 25.0 if args.temperature_c is None else args.temperature_c  # ranges: the options' types
    photons = read_ptu(args.file)
    ticks_per_bin = max(1, math.ceil(25e-9 / photons.resolution_s - 1e-9))  # ~25 ns, a whole number of ticks
    correlator = MultiTauCorrelator(photons.resolution_s, base_lag_s=ticks_per_bin * photons.resolution_s)
    correlator.add(photons.ticks)
    time_s, rate_hz = correlator.count_trace()
    correlation = Correlation(angle_deg=args.angle, lag_s=correlator.lag_s, g2_minus_1=correlator.g2_minus_1(),
                              count_rate_hz=correlator.count_rate_hz, count_trace_time_s=time_s,
                              count_trace_hz=rate_hz, channel="ptu")
    return DLSRecord(wavelength_nm=args.wavelength_nm, temperature_c=temperature_c, viscosity_mpa_s=None,
                     refractive_index=args.medium_refractive_index or 1.332, correlations=[correlation],
                     duration_s=correlator.duration_s, source=str(args.file), format="ptu", path=args.file)


def cmd_bench(args: argparse.Namespace) -> int:
    from exoacq.dls.correlator_bench import bench_correlator
    print(json.dumps(bench_correlator(duration_s=args.duration, count_rate_hz=args.count_rate)))
    return 0
