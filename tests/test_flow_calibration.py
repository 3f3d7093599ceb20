"""Scatter and fluorescence calibration of nano flow cytometry (exoacq.flow.calibration): bead fits
against a known forward model, EV diameter round trips, bead-population finding, TOML files."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT

from exoacq.errors import ExoacqError
from exoacq.flow.calibration import (BeadPoint, FlowCalibration, bead_medians, fit_fluorescence, fit_scatter,
                                     load_bead_set, load_calibration)
from exoacq.flow.scatter import Collection, collected_cross_section_nm2, ev, polystyrene, silica

WAVELENGTH_NM = 488.0
WATER = 1.333
TRUE_GAIN = 2.5                                   # a.u. per nm^2
TRUE_COLLECTION = Collection(90.0, 40.0, "perpendicular")
SILICA_NM = [80.0, 100.0, 150.0, 200.0, 300.0, 500.0]
EV_NM = np.array([50.0, 70.0, 100.0, 140.0, 200.0])


def forward_au(diameters_nm, particle, collection=TRUE_COLLECTION, gain=TRUE_GAIN):
    return gain * collected_cross_section_nm2(diameters_nm, particle, wavelength_nm=WAVELENGTH_NM,
                                              medium_refractive_index=WATER, collection=collection)


def synthetic_beads(noise: float, seed: int, sizes=SILICA_NM, particle=None) -> list[BeadPoint]:
    particle = particle or silica(WAVELENGTH_NM)
    medians = forward_au(sizes, particle) * np.exp(np.random.default_rng(seed).normal(0.0, noise, len(sizes)))
    return [BeadPoint(d, particle, float(m)) for d, m in zip(sizes, medians)]


def fit(beads, guess=TRUE_COLLECTION, fit_geometry=True):
    return fit_scatter(beads, parameter="SSC-H", wavelength_nm=WAVELENGTH_NM, medium_refractive_index=WATER,
                       collection_guess=guess, particle=ev(), fit_geometry=fit_geometry)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gain_from_noisy_silica_beads_and_ev_round_trip(seed):
    cal = fit(synthetic_beads(0.02, seed), fit_geometry=False)
    assert cal.gain_au_per_nm2 == pytest.approx(TRUE_GAIN, rel=0.03)
    assert not cal.geometry_fitted
    assert len(cal.residuals_percent) == len(SILICA_NM)
    assert max(abs(r) for r in cal.residuals_percent) < 8.0          # 2% noise: a few percent
    true_scatter = forward_au(EV_NM, ev())
    np.testing.assert_allclose(cal.diameter_nm(true_scatter), EV_NM, rtol=0.01)
    np.testing.assert_allclose(cal.scatter_au(EV_NM), true_scatter, rtol=0.03)


def test_geometry_recovered_exactly_from_noiseless_beads():
    cal = fit(synthetic_beads(0.0, 0), guess=Collection(90.0, 25.0))
    assert cal.geometry_fitted
    assert cal.collection.half_angle_deg == pytest.approx(40.0, abs=0.05)
    assert cal.gain_au_per_nm2 == pytest.approx(TRUE_GAIN, rel=2e-3)
    assert max(abs(r) for r in cal.residuals_percent) < 0.05


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_geometry_fit_with_noise_sizes_evs_within_one_percent(seed):
    """With 2% noise the half-angle and the gain trade off (both scale the collected light), so
    the gain alone moves by up to ~8%; what the calibration is for, the EV diameter, stays within 1%."""
    beads = synthetic_beads(0.02, seed) + synthetic_beads(0.02, seed + 10, [200.0, 400.0, 600.0],
                                                          polystyrene(WAVELENGTH_NM))
    cal = fit(beads, guess=Collection(90.0, 25.0))
    assert cal.geometry_fitted
    assert cal.collection.half_angle_deg == pytest.approx(40.0, abs=3.0)
    assert cal.gain_au_per_nm2 == pytest.approx(TRUE_GAIN, rel=0.10)
    np.testing.assert_allclose(cal.diameter_nm(forward_au(EV_NM, ev())), EV_NM, rtol=0.01)


def test_rayleigh_beads_of_one_material_leave_the_geometry_alone():
    beads = synthetic_beads(0.0, 0, sizes=[60.0, 80.0, 100.0, 120.0])
    cal = fit(beads, guess=Collection(90.0, 30.0))
    assert not cal.geometry_fitted and cal.collection.half_angle_deg == 30.0
    with pytest.raises(ExoacqError, match="at least 2"):
        fit(beads[:1])
    with pytest.raises(ExoacqError, match="positive median"):
        fit([BeadPoint(100.0, silica(WAVELENGTH_NM), 0.0), *beads])


def test_diameter_is_nan_where_not_invertible():
    cal = fit(synthetic_beads(0.0, 0), fit_geometry=False)
    out = cal.diameter_nm(np.array([-5.0, 0.0, 1e-9, np.nan, 1e12]))
    assert np.isnan(out).all()


def test_fluorescence_ladder_recovered():
    mesf = np.array([500.0, 2000.0, 8000.0, 30000.0, 120000.0])
    slope, intercept = 1.05, 0.8                      # the instrument: log10 MESF = 0.8 + 1.05 log10 au
    au = 10 ** ((np.log10(mesf) - intercept) / slope)
    cal = fit_fluorescence("FL1-H", "FITC", np.concatenate([[3.0], au]), np.concatenate([[0.0], mesf]))
    assert cal.slope == pytest.approx(slope, rel=1e-9)
    assert cal.intercept == pytest.approx(intercept, abs=1e-9)
    assert len(cal.beads) == 5                        # the blank is left out of the fit
    np.testing.assert_allclose(cal.mesf(au), mesf, rtol=1e-9)
    assert np.isnan(cal.mesf([0.0, -2.0])).all()
    with pytest.raises(ExoacqError, match="2 or more"):
        fit_fluorescence("FL1-H", "FITC", [10.0], [500.0])


def lognormal_populations(medians, cv, counts, seed):
    rng = np.random.default_rng(seed)
    sigma = math.sqrt(math.log(1 + cv**2))
    return np.concatenate([m * np.exp(rng.normal(0.0, sigma, n)) for m, n in zip(medians, counts)])


def test_bead_medians_finds_lognormal_populations():
    medians = np.array([30.0, 95.0, 400.0, 1500.0, 9000.0, 60000.0])
    values = lognormal_populations(medians, 0.25, [3000, 8000, 20000, 5000, 12000, 4000], seed=3)
    table = pd.DataFrame({"SSC-H": np.random.default_rng(4).permutation(values), "FL1-H": 1.0})
    found = bead_medians(table, "SSC-H", 6)
    np.testing.assert_allclose(found, medians, rtol=0.01)
    assert found == sorted(found)


def test_bead_medians_with_noise_events_below_min_value():
    medians = np.array([50.0, 200.0, 1000.0])
    values = lognormal_populations(medians, 0.3, [5000, 5000, 5000], seed=5)
    noise = np.abs(np.random.default_rng(6).normal(0.0, 4.0, 4000))   # events at the trigger threshold
    table = pd.DataFrame({"SSC-H": np.concatenate([values, noise, [-3.0, 0.0]])})
    np.testing.assert_allclose(bead_medians(table, "SSC-H", 3, min_value=15.0), medians, rtol=0.02)
    with pytest.raises(ExoacqError, match="no parameter 'FSC-H'"):
        bead_medians(table, "FSC-H", 3)
    with pytest.raises(ExoacqError, match="too few"):
        bead_medians(table.iloc[:10], "SSC-H", 3)


def make_calibration() -> FlowCalibration:
    scatter = fit(synthetic_beads(0.02, 0), guess=Collection(90.0, 35.0))
    fl1 = fit_fluorescence("FL1-H", "FITC", [12.0, 50.0, 210.0, 800.0], [500.0, 2000.0, 8000.0, 30000.0])
    fl2 = fit_fluorescence("FL2-H", "PE \"quoted\"", [5.0, 20.0, 90.0], [300.0, 1200.0, 5000.0])
    return FlowCalibration(scatter=scatter, fluorescence={"FL1-H": fl1, "FL2-H": fl2},
                           created="2026-12-02T05:30:00Z", source="unit test",
                           provenance={"operator": "tester", "silica_lot": "SIM-SIO2-2026-001", "beads": 6,
                                       "nominal": True, "lots": ["a", "b"]}, expires="2027-06-02")


def test_flow_calibration_toml_round_trip(tmp_path):
    cal = make_calibration()
    path = tmp_path / "flow.toml"
    path.write_text(cal.to_toml())
    back = load_calibration(path)
    assert back == cal                     # dataclass equality: every field, every bead, exact floats
    assert back.scatter.particle.shell_thickness_nm == 5.0
    values = np.array([100.0, 1000.0, 5000.0])
    np.testing.assert_array_equal(back.scatter.diameter_nm(values), cal.scatter.diameter_nm(values))
    np.testing.assert_array_equal(back.fluorescence["FL2-H"].mesf(values), cal.fluorescence["FL2-H"].mesf(values))
    only_fl = FlowCalibration(None, {}, created="x", source="s", provenance={})
    assert FlowCalibration.from_toml(only_fl.to_toml()) == only_fl


@pytest.mark.parametrize("old,new,message", [
    ("gain_au_per_nm2 = ", "gain_au_per_nm2 = -", "scatter.gain_au_per_nm2"),
    ('polarization = "perpendicular"', 'polarization = "circular"', "scatter.collection"),
    ('kind = "flow"', 'kind = "nta.detection_volume"', "calibration.kind"),
    ("slope = ", "slope = 'steep' #", "fluorescence.FL1-H.slope"),
    ("[scatter.particle]", "[scatter.particlx]", "scatter.particle: missing"),
    ("half_angle_deg = ", "half_angle_deg = true #", "scatter.collection.half_angle_deg"),
    ("[calibration]", "[calibration", "not valid TOML"),
])
def test_bad_calibration_file_gives_one_line_error_with_file_and_key(tmp_path, old, new, message):
    text = make_calibration().to_toml()
    assert old in text
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ExoacqError) as info:
        load_calibration(path)
    assert str(path) in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(ExoacqError, match="cannot read"):
        load_calibration(tmp_path / "missing.toml")


def test_bead_standard_files():
    silica_set = load_bead_set(ROOT / "calibrations" / "flow" / "beads-silica.toml")
    assert silica_set.nominal and silica_set.lot and silica_set.material == "silica"
    assert silica_set.diameters_nm == sorted(silica_set.diameters_nm) and len(silica_set.diameters_nm) >= 5
    assert len(silica_set.diameter_cv_percent) == len(silica_set.diameters_nm)
    import tomllib
    doc = tomllib.loads((ROOT / "calibrations" / "flow" / "beads-silica.toml").read_text())
    for wavelength in (405, 488, 638):   # the stated indices are the model's
        stated = doc["standard"][f"refractive_index_{wavelength}nm"]
        assert silica_set.particle(wavelength).refractive_index == pytest.approx(stated, abs=1e-4)
    mesf_set = load_bead_set(ROOT / "calibrations" / "flow" / "beads-mesf.toml")
    assert mesf_set.nominal and set(mesf_set.mesf) == {"FITC", "PE"}
    for ladder in mesf_set.mesf.values():
        assert ladder[0] == 0.0 and all(b > a for a, b in zip(ladder, ladder[1:]))
    # calibrating with the silica set through its bead points
    medians = forward_au(silica_set.diameters_nm, silica_set.particle(WAVELENGTH_NM))
    cal = fit(silica_set.bead_points(list(medians), WAVELENGTH_NM), fit_geometry=False)
    assert cal.gain_au_per_nm2 == pytest.approx(TRUE_GAIN, rel=1e-9)
