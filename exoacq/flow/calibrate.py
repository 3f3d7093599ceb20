"""``exoacq calibrate flow``: a flow calibration from bead acquisitions (FCS files, or the simulated cytometer).

Scatter: the medians of a size-standard bead set (``calibrations/flow/beads-*.toml``:
diameters, material, lot) are fitted with Mie theory for the collection geometry
(:func:`exoacq.flow.calibration.fit_scatter`, FCMPASS-like: Welsh et al. 2020,
Cytometry A 97:569), and the EV core-shell model stated in the file is what
samples are sized with. Fluorescence: the medians of an MESF bead ladder give a
log-log line per parameter (:func:`exoacq.flow.calibration.fit_fluorescence`).
"""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from exoacq.errors import ExoacqError

#: A calibration is valid this long unless told otherwise (beads are run again at least monthly).
DEFAULT_VALIDITY_DAYS = 30


def bead_scatter(events: Any, parameter: str, bead_set: Any, *, min_value: float, wavelength_nm: float,
                 medium_refractive_index: float, collection: Any) -> list[float]:
    """The medians of the bead set's populations (ascending, as its diameters), found where Mie
    theory at the guessed geometry expects them relative to each other."""
    from exoacq.flow.calibration import bead_medians
    from exoacq.flow.scatter import collected_cross_section_nm2

    if parameter not in events.columns:
        raise ExoacqError(f"bead file: no parameter {parameter!r} (has {', '.join(map(str, events.columns))})",
                          code="usage")
    model = collected_cross_section_nm2(bead_set.diameters_nm, bead_set.particle(wavelength_nm),
                                        wavelength_nm=wavelength_nm,
                                        medium_refractive_index=medium_refractive_index, collection=collection)
    return bead_medians(events, parameter, len(bead_set.diameters_nm), min_value=min_value, model_au=model)


def ladder_medians(events: Any, parameter: str, levels: list[float], *, min_value: float) -> tuple[list, list]:
    """(medians, MESF) of an MESF ladder's bright populations (the blank bead has no fluorescence to fit)."""
    from exoacq.flow.calibration import bead_medians

    if parameter not in events.columns:
        raise ExoacqError(f"MESF bead file: no parameter {parameter!r} (has {', '.join(map(str, events.columns))})",
                          code="usage")
    bright = [m for m in levels if m > 0]
    medians = bead_medians(events, parameter, len(bright), min_value=min_value)
    return medians, bright


def make_calibration(*, scatter_events: Any, scatter_parameter: str, bead_set_path: Path, wavelength_nm: float,
                     medium_refractive_index: float, collection: Any, particle: Any, fit_geometry: bool,
                     min_value: float, mesf: list[tuple[Any, str, str]], mesf_set_path: Path | None,
                     sources: list[str], validity_days: int | None = DEFAULT_VALIDITY_DAYS,
                     names: dict[str, str] | None = None, detector: dict | None = None) -> Any:
    """A :class:`~exoacq.flow.calibration.FlowCalibration` from bead events.

    ``mesf``: (events, parameter, fluorochrome) per fluorescence parameter to calibrate; ``validity_days``
    None: the calibration does not expire; ``names``: how the bead files are named in the provenance
    (as the operator gave them; default their paths); ``detector``: the trigger channel's baseline
    and noise during the bead run (``channel``, ``baseline_counts``, ``noise_counts``), when known."""
    names = names or {}
    from exoacq.flow.calibration import FlowCalibration, fit_fluorescence, fit_scatter, load_bead_set

    bead_set = load_bead_set(bead_set_path)
    if bead_set.kind != "flow.beads.scatter":
        raise ExoacqError(f"{bead_set_path}: a scatter bead set is needed (standard.kind = flow.beads.scatter)",
                          code="usage")
    medians = bead_scatter(scatter_events, scatter_parameter, bead_set, min_value=min_value,
                           wavelength_nm=wavelength_nm, medium_refractive_index=medium_refractive_index,
                           collection=collection)
    scatter = fit_scatter(bead_set.bead_points(medians, wavelength_nm), parameter=scatter_parameter,
                          wavelength_nm=wavelength_nm, medium_refractive_index=medium_refractive_index,
                          collection_guess=collection, particle=particle, fit_geometry=fit_geometry)
    fluorescence = {}
    provenance: dict[str, Any] = {"scatter_beads": {"name": bead_set.name, "lot": bead_set.lot,
                                                    "nominal": bead_set.nominal,
                                                    "file": names.get("scatter", str(bead_set_path))}}
    if mesf:
        if mesf_set_path is None:
            raise ExoacqError("MESF bead files need their ladder (--mesf-beads FILE.toml)", code="usage")
        ladder = load_bead_set(mesf_set_path)
        provenance["mesf_beads"] = {"name": ladder.name, "lot": ladder.lot, "nominal": ladder.nominal,
                                    "file": names.get("mesf", str(mesf_set_path))}
        for events, parameter, fluorochrome in mesf:
            if fluorochrome not in ladder.mesf:
                raise ExoacqError(f"{mesf_set_path}: no {fluorochrome} ladder (has {', '.join(ladder.mesf)})",
                                  code="usage")
            values, levels = ladder_medians(events, parameter, ladder.mesf[fluorochrome], min_value=min_value)
            fluorescence[parameter] = fit_fluorescence(parameter, fluorochrome, values, levels)
    spillover = fit_spillover([(events, parameter) for events, parameter, _ in mesf]) if len(mesf) > 1 else None
    now = datetime.now(timezone.utc)
    provenance["measured_from"] = sources
    return FlowCalibration(scatter=scatter, fluorescence=fluorescence, created=now.isoformat(timespec="seconds"),
                           source=", ".join(sources), provenance=provenance,
                           expires=(date.today() + timedelta(days=validity_days)).isoformat() if validity_days else None,
                           spillover=spillover, detector=detector)


def fit_spillover(single_stains: list[tuple[Any, str]], *, min_fraction_of_max: float = 0.05) -> Any:
    """The spillover matrix from single-stained bead files: ``(events, own parameter)`` per
    fluorochrome. S[i, j] = median over the bright beads of (signal in detector j) / (signal in
    i's own detector), the standard single-stain estimate (Roederer 2001, Cytometry 45:194);
    bright: above ``min_fraction_of_max`` of the file's 99th percentile in the own detector."""
    import numpy as np
    import pandas as pd

    names = [parameter for _, parameter in single_stains]
    matrix = np.eye(len(names))
    for i, (events, own) in enumerate(single_stains):
        missing = [n for n in names if n not in events.columns]
        if missing:
            raise ExoacqError(f"single-stain beads for {own}: no parameter(s) {', '.join(missing)}", code="usage")
        signal = events[own].to_numpy(dtype=float)
        bright = signal > min_fraction_of_max * np.percentile(signal, 99)
        if np.count_nonzero(bright) < 50:
            raise ExoacqError(f"single-stain beads for {own}: only {np.count_nonzero(bright)} bright events "
                              "(need 50) to measure spillover", code="bad_calibration")
        for j, other in enumerate(names):
            if j != i:
                matrix[i, j] = float(np.median(events[other].to_numpy(dtype=float)[bright] / signal[bright]))
    return pd.DataFrame(matrix, index=names, columns=names)


def simulated_bead_events(kind: str, *, duration_s: float, settings: Any, seed: int | None,
                          channel: str = "FL1") -> tuple[Any, Any]:
    """(events, recorder) of simulated beads through the pulse detector: ``silica``, or ``mesf``
    (the ladder of ``channel``'s fluorochrome, on 2 um beads)."""
    from exoacq.flow.simulate import Cytometer, FlowSimulator
    from exoacq.flow.simulated import mesf_beads, record, silica_beads

    populations = silica_beads() if kind == "silica" else mesf_beads(channel)
    recorder = record(FlowSimulator(populations, Cytometer(), seed=seed), duration_s, settings)
    return recorder.events(), recorder
