"""A MISEV2023-style checklist: what a sample's runs and entered results show, and what is missing.

MISEV2023: Welsh JA, Goberdhan DCI, O'Driscoll L, et al. Minimal information for
studies of extracellular vesicles (MISEV2023): from basic to advanced
approaches. J Extracell Vesicles 2024; 13(2): e12404 (doi:10.1002/jev2.12404).

MISEV2023 gives recommendations for characterising EV preparations: quantify
particles and a second quantity such as protein, and relate them (a ratio as a
purity indicator); show EV-associated proteins of more than one kind
(transmembrane or GPI-anchored, e.g. tetraspanins; cytosolic, e.g. TSG101,
Alix) and assess components not expected in EVs (e.g. calnexin of the
endoplasmic reticulum); characterise single vesicles (imaging such as electron
microscopy, and single-particle methods); use and report controls. It is not a
pass/fail list, and it asks for much this report does not cover (the EV source,
collection, separation and storage). Here "done" means only that the item is
measured and reported among these runs and entries.
"""
from __future__ import annotations

from typing import Any

from exoacq.web.summaries import field, first_sized_measurement, method_of, number, result_of

TRANSMEMBRANE = ("CD9", "CD63", "CD81")
CYTOSOLIC = ("TSG101", "Alix")
NEGATIVE = ("calnexin",)
CITATION = ("Welsh JA, Goberdhan DCI, O'Driscoll L, et al. Minimal information for studies of extracellular "
            "vesicles (MISEV2023): from basic to advanced approaches. J Extracell Vesicles 2024; 13(2): e12404. "
            "doi:10.1002/jev2.12404")


def _item(key: str, item: str, status: str, detail: str) -> dict[str, str]:
    return {"key": key, "item": item, "status": status, "detail": detail}


def _by_method(runs: list[dict[str, Any]], method: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(run, result) of the runs of one method that have a result."""
    return [(run, result_of(run)) for run in runs if method_of(run) == method and result_of(run) is not None]


def _rid(run: dict[str, Any]) -> str:
    return str(run.get("run_id") or (result_of(run) or {}).get("source") or "?")


def purity_ratios(runs: list[dict[str, Any]], info: dict[str, Any]) -> list[dict[str, Any]]:
    """Particles per ug of protein: each particle concentration (NTA, flow) / the protein concentration.

    (particles/mL) / (ug/mL) = particles/ug. Both must be of the same (undiluted) preparation: the
    runs' concentrations are of the original sample (their dilution applied).
    """
    protein = number((info or {}).get("protein_ug_per_ml"))
    if protein is None or protein <= 0:
        return []
    out = []
    for method in ("nta", "flow"):
        for run, result in _by_method(runs, method):
            concentration = number(result.get("concentration_per_ml"))
            if concentration is not None:
                out.append({"run_id": _rid(run), "method": method, "concentration_per_ml": concentration,
                            "protein_ug_per_ml": protein, "particles_per_ug": concentration / protein})
    return out


def _western(info: dict[str, Any], names: tuple[str, ...]) -> dict[str, str]:
    blot = (info or {}).get("western_blot") or {}
    return {name: blot.get(name, "not tested") for name in names}


def _marker_item(key: str, item: str, names: tuple[str, ...], runs: list[dict[str, Any]],
                 info: dict[str, Any]) -> dict[str, str]:
    """An EV marker class: done when one of `names` is positive (western blot) or measured by flow."""
    blot = _western(info, names)
    positive = [n for n, r in blot.items() if r == "positive"]
    negative = [n for n, r in blot.items() if r == "negative"]
    flow = []
    for run, result in _by_method(runs, "flow"):
        for name, fraction in (result.get("markers") or {}).items():
            value = number(fraction)
            if value is not None and str(name).lower() in {n.lower() for n in names}:
                flow.append(f"{name} {100 * value:.1f} % of counted events (flow, {_rid(run)})")
    found = [f"{n} positive (western blot)" for n in positive] + flow
    if found:
        return _item(key, item, "done", "; ".join(found))
    if negative:
        return _item(key, item, "partial", f"tested, not detected: {', '.join(negative)} negative (western blot); "
                                            f"show one of {', '.join(names)} present")
    return _item(key, item, "missing", f"none of {', '.join(names)} tested: enter a western blot, or measure one "
                                       "by flow (a marker named after it)")


def misev_checklist(runs: list[dict[str, Any]], info: dict[str, Any]) -> list[dict[str, str]]:
    """The checklist: [{key, item, status ("done", "partial", "missing"), detail}] in a fixed order."""
    runs = [r for r in runs or [] if isinstance(r, dict)]
    info = info or {}
    nta, dls, flow = _by_method(runs, "nta"), _by_method(runs, "dls"), _by_method(runs, "flow")
    items = []

    counted = [f"NTA {_rid(r)}: {number(res.get('concentration_per_ml')):.2e} particles/mL" for r, res in nta
               if number(res.get("concentration_per_ml")) is not None]
    counted += [f"flow {_rid(r)}: {number(res.get('concentration_per_ml')):.2e} events/mL" for r, res in flow
                if number(res.get("concentration_per_ml")) is not None]
    items.append(_item("particle_quantification", "Particle quantification", "done" if counted else "missing",
                       "; ".join(counted) if counted else
                       "no particle concentration: an NTA run with a calibrated detection volume, or a flow run "
                       "with a known volume"))

    single = [f"NTA {_rid(r)} (number-weighted)" for r, res in nta if number(field(res, "size_nm.mean")) is not None]
    single += [f"flow {_rid(r)} (number-weighted, calibrated scatter)" for r, res in flow
               if number(field(res, "size_nm.median")) is not None]
    ensemble = [f"DLS {_rid(r)} (intensity-weighted Z-average, ISO 22412)" for r, res in dls
                if first_sized_measurement(res) is not None]
    if single and ensemble:
        status, detail = "done", f"single-particle: {'; '.join(single)}; ensemble: {'; '.join(ensemble)}"
    elif single:
        status, detail = "partial", (f"single-particle: {'; '.join(single)}; no ensemble (DLS) size beside it "
                                     "(a quick, intensity-weighted comparison; complementary, not a MISEV2023 "
                                     "requirement on its own)")
    elif ensemble:
        status, detail = "partial", (f"only an ensemble size: {'; '.join(ensemble)}; size single particles "
                                     "(NTA, or flow with a scatter calibration): MISEV2023 asks for "
                                     "single-particle characterisation")
    else:
        status, detail = "missing", "no size: an NTA run, a calibrated flow run, and a DLS run for comparison"
    items.append(_item("size", "Size: a single-particle method (NTA or flow) and an ensemble method (DLS)",
                       status, detail))

    protein, assay = number(info.get("protein_ug_per_ml")), info.get("protein_assay")
    items.append(_item("protein_quantification", "Protein quantification",
                       "done" if protein is not None else "missing",
                       f"{protein:g} ug/mL ({assay or 'assay not named'})" if protein is not None else
                       "enter the total protein concentration of the preparation (ug/mL) and its assay"))

    ratios = purity_ratios(runs, info)
    if ratios:
        items.append(_item("purity_ratio", "Purity: particles per ug of protein", "done",
                           "; ".join(f"{'NTA' if r['method'] == 'nta' else 'flow'} {r['run_id']}: {r['particles_per_ug']:.2e} particles/ug"
                                     for r in ratios)))
    else:
        need = [w for w, ok in (("a particle concentration", bool(counted)), ("the protein concentration",
                                                                           protein is not None)) if not ok]
        items.append(_item("purity_ratio", "Purity: particles per ug of protein", "missing",
                           f"needs {' and '.join(need)}"))

    items.append(_marker_item("transmembrane_marker", "EV marker: transmembrane or GPI-anchored (CD9, CD63, CD81)",
                              TRANSMEMBRANE, runs, info))
    items.append(_marker_item("cytosolic_marker", "EV marker: cytosolic (TSG101, Alix)", CYTOSOLIC, runs, info))

    blot = _western(info, NEGATIVE)
    absent = [n for n, r in blot.items() if r == "negative"]
    present = [n for n, r in blot.items() if r == "positive"]
    if present:
        items.append(_item("negative_marker", "Non-EV component shown absent (calnexin)", "partial",
                           f"{', '.join(present)} detected (western blot): the preparation holds cellular "
                           "(endoplasmic reticulum) material; report it and consider further separation"))
    else:
        items.append(_item("negative_marker", "Non-EV component shown absent (calnexin)",
                           "done" if absent else "missing",
                           f"{', '.join(absent)} not detected (western blot)" if absent else
                           "calnexin not tested: show by western blot that it is absent"))

    tem = info.get("tem") or {}
    images, morphology = list(tem.get("images") or []), str(tem.get("morphology") or "").strip()
    if images and morphology:
        status, detail = "done", f"TEM: {len(images)} image(s) and the morphology described"
    elif images or morphology:
        status, detail = "partial", ("TEM images attached; describe the morphology" if images else
                                     "TEM morphology described; attach the images (wide-field and close-up)")
    else:
        status, detail = "missing", "no image of single vesicles: attach TEM images and describe the morphology"
    items.append(_item("single_vesicle_imaging", "Single-vesicle imaging (TEM)", status, detail))

    items.append(_controls(runs, nta, flow))
    items.append(_suitability(nta, flow))
    return items


def _controls(runs: list[dict[str, Any]], nta: list, flow: list) -> dict[str, str]:
    used, problems, other = [], [], []
    for run, result in nta:
        blank = result.get("blank")
        if isinstance(blank, dict) and blank.get("run_id"):
            if blank.get("error"):
                problems.append(f"NTA {_rid(run)}: blank {blank['run_id']} not used ({blank['error']})")
            else:
                used.append(f"NTA {_rid(run)}: buffer blank {blank['run_id']} subtracted")
        elif field(result, "settings.acquisition.blank") is True or field(run, "settings.blank") is True:
            used.append(f"NTA {_rid(run)} is a buffer blank")
    for run, result in flow:
        controls = result.get("controls") or {}
        if result.get("control") == "buffer" or "buffer" in controls:
            used.append(f"flow {_rid(run)}: buffer control" + (" (this run)" if result.get("control") else ""))
        kinds = sorted(k for k in controls if k != "buffer") + ([result["control"]] if result.get("control")
                                                                 not in (None, "buffer") else [])
        other += [f"flow {_rid(run)}: {k} control" for k in kinds]
    if used:
        return _item("controls", "Blanks and controls", "done", "; ".join(used + other + problems))
    if problems or other:
        return _item("controls", "Blanks and controls", "partial",
                     "; ".join(problems + other) + "; no buffer blank used (NTA blank_run, or a flow buffer control)")
    return _item("controls", "Blanks and controls", "missing",
                 "no buffer blank: measure the buffer alone (NTA blank, attached with blank_run) or a flow buffer "
                 "control")


def _suitability(nta: list, flow: list) -> dict[str, str]:
    key, item = "system_suitability", "System suitability (NTA bead check, calibration in date)"
    passed, flags = [], []
    for run, result in nta:
        check = result.get("bead_check")
        if isinstance(check, dict):  # this run is a bead check
            (passed if check.get("passed") else flags).append(
                f"bead check {_rid(run)} ({check.get('standard') or 'standard'}, lot {check.get('lot') or '?'}): "
                + ("passed" if check.get("passed") else "failed: " + "; ".join(check.get("problems") or [])))
            continue  # its own suitability was judged before it: the runs measured after it tell
        suitability = result.get("suitability")
        if isinstance(suitability, dict):
            bead = suitability.get("bead_check")
            if suitability.get("suitable"):
                passed.append(f"NTA {_rid(run)}: " + (
                    f"bead check {bead.get('run_id')} passed {number(bead.get('age_h')) or 0:.1f} h before"
                    if isinstance(bead, dict) and bead.get("passed") else
                    "suitable without a bead check (none required by the instrument's settings)")
                    + "; calibration in date")
            else:
                run_flags = suitability.get("flags") or (["not suitable"] if suitability.get("suitable") is False
                                                         else [])
                flags += [f"NTA {_rid(run)}: {flag}" for flag in run_flags]
    for run, result in flow:
        calibration = result.get("calibration")
        if isinstance(calibration, dict) and calibration.get("expired"):
            flags.append(f"flow {_rid(run)}: calibration expired ({calibration.get('expires')})")
    if passed and not flags:
        return _item(key, item, "done", "; ".join(passed))
    if passed or flags:
        return _item(key, item, "partial", "; ".join(flags + passed))
    return _item(key, item, "missing", "no NTA run among these: run a bead check (exoacq/sops/bead-check-100nm.toml) "
                                       "within the instrument's period and measure the sample after it")
