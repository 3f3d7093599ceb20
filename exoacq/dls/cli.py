"""The DLS method's command-line verbs: ``analyze dls``, ``acquire dls`` and ``bench correlator``."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from exoacq.cli_common import add_acquire_options, positive_float, run_acquisition
from exoacq.errors import ExoacqError


def add_cli(verbs: dict[str, Any]) -> None:
    p = verbs["acquire"].add_parser("dls", help="DLS: Z-average, PDI and size distributions")
    p.add_argument("--duration", type=positive_float, default=None, help="seconds of each sub-run (default 10)")
    p.add_argument("--runs", type=int, default=None, help="sub-runs, analysed together with dust rejection (default 3)")
    p.add_argument("--angle", type=positive_float, default=None, help="scattering angle, degrees (default: the detector's)")
    add_acquire_options(p)
    p.set_defaults(func=cmd_acquire)

    p = verbs["analyze"].add_parser("dls", help="analyse a correlator file (ALV .ASC, correlator.com .SIN) or "
                                                "photons (PicoQuant .ptu)")
    p.add_argument("file", type=Path)
    p.add_argument("--particle-refractive-index", type=positive_float, default=1.59,
                   help="for the Mie volume and number distributions (default %(default)s: polystyrene)")
    p.add_argument("--angle", type=positive_float, help="scattering angle (degrees) of a .ptu file")
    p.add_argument("--wavelength-nm", type=positive_float, help="laser wavelength of a .ptu file")
    p.add_argument("--temperature-c", type=float, help="sample temperature of a .ptu file (default 25 C)")
    p.add_argument("--medium-refractive-index", type=positive_float, default=None,
                   help="of a .ptu file's medium (default 1.332)")
    p.add_argument("--json", action="store_true", help="print the result document alone on stdout")
    p.set_defaults(func=cmd_analyze)

    b = verbs["bench"].add_parser("correlator", help="the DLS software correlator against multipletau (JSON)")
    b.add_argument("--duration", type=positive_float, default=2.0, help="seconds of photons (default %(default)s)")
    b.add_argument("--count-rate", type=positive_float, default=5e6, help="photons/s (default %(default)g)")
    b.add_argument("--json", action="store_true", help="JSON on stdout (the only output format)")
    b.set_defaults(func=cmd_bench)


def cmd_acquire(args: argparse.Namespace) -> int:
    params = {"duration_s": args.duration, "runs": args.runs, "angle_deg": args.angle}
    return run_acquisition(args, "dls", {k: v for k, v in params.items() if v is not None})


def cmd_analyze(args: argparse.Namespace) -> int:
    from exoacq.dls.analysis import analyze_record
    from exoacq.dls.format import format_analysis

    path: Path = args.file
    if not path.exists():
        raise ExoacqError(f"{path}: no such file", code="usage")
    if path.suffix.lower() == ".ptu":
        record = _ptu_record(args)
    else:
        from exoacq.dls.io import read_dls_file
        record = read_dls_file(path)
    document = analyze_record(record, particle_refractive_index=args.particle_refractive_index)
    print(json.dumps(document) if args.json else format_analysis(document))
    return 0


def _ptu_record(args: argparse.Namespace):
    """Photons from a PTU file, correlated here like a live acquisition."""
    from exoacq.dls.correlator import MultiTauCorrelator
    from exoacq.dls.io import read_ptu
    from exoacq.dls.record import Correlation, DLSRecord

    if args.angle is None or args.wavelength_nm is None:
        raise ExoacqError(f"{args.file}: a PTU file does not record the optics: give --angle and --wavelength-nm",
                          code="usage")
    photons = read_ptu(args.file)
    ticks_per_bin = max(1, math.ceil(25e-9 / photons.resolution_s - 1e-9))  # ~25 ns, a whole number of ticks
    correlator = MultiTauCorrelator(photons.resolution_s, base_lag_s=ticks_per_bin * photons.resolution_s)
    correlator.add(photons.ticks)
    time_s, rate_hz = correlator.count_trace()
    correlation = Correlation(angle_deg=args.angle, lag_s=correlator.lag_s, g2_minus_1=correlator.g2_minus_1(),
                              count_rate_hz=correlator.count_rate_hz, count_trace_time_s=time_s,
                              count_trace_hz=rate_hz, channel="ptu")
    return DLSRecord(wavelength_nm=args.wavelength_nm, temperature_c=25.0 if args.temperature_c is None
                     else args.temperature_c, viscosity_mpa_s=None,
                     refractive_index=args.medium_refractive_index or 1.332, correlations=[correlation],
                     duration_s=correlator.duration_s, source=str(args.file), format="ptu", path=args.file)


def cmd_bench(args: argparse.Namespace) -> int:
    from exoacq.dls.correlator_bench import bench_correlator
    print(json.dumps(bench_correlator(duration_s=args.duration, count_rate_hz=args.count_rate)))
    return 0
