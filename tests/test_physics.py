"""The constants and formulas every size depends on, pinned to their sources."""
import pytest

from exoacq import physics


@pytest.mark.parametrize("temperature_c, expected_mpa_s", [(20.0, 1.0016), (25.0, 0.8900), (37.0, 0.6913)])
def test_water_viscosity_matches_iapws_2008_values(temperature_c, expected_mpa_s):
    assert physics.water_viscosity_iapws_mpa_s(temperature_c) == pytest.approx(expected_mpa_s, rel=1e-3)


def test_iapws_2008_check_value():
    # Release IAPWS R12-08, Table 4: 298.15 K, 998 kg/m^3 -> 889.735100 uPa s.
    assert physics.water_viscosity_iapws_mpa_s(25.0, density_kg_m3=998.0) * 1000 == pytest.approx(889.735100, abs=1e-6)


def test_water_density_tanaka_2001():
    assert physics.water_density_kg_m3(25.0) == pytest.approx(997.0470, abs=2e-3)
    assert physics.water_density_kg_m3(3.98) == pytest.approx(999.9750, abs=2e-3)


def test_stokes_einstein_100nm_at_25c():
    eta = physics.water_viscosity_iapws_mpa_s(25.0)
    assert physics.stokes_einstein_diffusion_um2_s(100.0, 25.0, eta) == pytest.approx(4.91, rel=5e-3)


def test_stokes_einstein_round_trip_and_arrays():
    eta = physics.water_viscosity_iapws_mpa_s(37.0)
    d = physics.stokes_einstein_diffusion_um2_s([50.0, 100.0, 400.0], 37.0, eta)
    assert physics.stokes_einstein_diameter_nm(d, 37.0, eta) == pytest.approx([50.0, 100.0, 400.0])
    assert d[0] == pytest.approx(2 * d[1])


def test_viscosity_refuses_temperatures_outside_liquid_water():
    with pytest.raises(ValueError, match="outside"):
        physics.water_viscosity_iapws_mpa_s(-40.0)


def test_rayleigh_factor_vanishes_for_index_matched_particles():
    assert physics.rayleigh_polarizability_factor(1.332, 1.332) == 0.0
    assert physics.rayleigh_polarizability_factor(1.59, 1.332) > physics.rayleigh_polarizability_factor(1.39, 1.332)
