"""Mie scatter into a flow cytometer's collection cone (exoacq.flow.scatter) against miepython,
an independent coated-sphere formulation, Rayleigh's law and full-sphere integrals."""
from __future__ import annotations

import math

import miepython
import numpy as np
import pytest
from scipy.special import spherical_jn, spherical_yn

from exoacq.errors import ExoacqError
from exoacq.flow.scatter import (POLARIZATIONS, Collection, Particle, ScatterTable, amplitudes,
                                 coated_sphere_coefficients, collected_cross_section_nm2, ev,
                                 mie_coefficients, polystyrene, silica, terms_needed)

WAVELENGTH_NM = 488.0
WATER = 1.333
SIDE = Collection(center_deg=90.0, half_angle_deg=40.0, polarization="perpendicular")


def cross_section(d, particle, collection=SIDE):
    return collected_cross_section_nm2(d, particle, wavelength_nm=WAVELENGTH_NM,
                                       medium_refractive_index=WATER, collection=collection)


def aden_kerker(m1: float, m2: float, x: float, y: float, n_terms: int):
    """Coated-sphere a_n, b_n straight from Bohren & Huffman eq. 8.2 with scipy's spherical Bessel
    functions (real indices): an independent check of the BHCOAT recurrences."""
    n = np.arange(1, n_terms + 1)

    def psi(z):
        return z * spherical_jn(n, z)

    def dpsi(z):
        return spherical_jn(n, z) + z * spherical_jn(n, z, derivative=True)

    def chi(z):
        return -z * spherical_yn(n, z)

    def dchi(z):
        return -spherical_yn(n, z) - z * spherical_yn(n, z, derivative=True)

    xi, dxi = psi(y) - 1j * chi(y), dpsi(y) - 1j * dchi(y)
    big_a = (m2 * psi(m2 * x) * dpsi(m1 * x) - m1 * dpsi(m2 * x) * psi(m1 * x)) / (
        m2 * chi(m2 * x) * dpsi(m1 * x) - m1 * dchi(m2 * x) * psi(m1 * x))
    big_b = (m2 * psi(m1 * x) * dpsi(m2 * x) - m1 * psi(m2 * x) * dpsi(m1 * x)) / (
        m2 * dchi(m2 * x) * psi(m1 * x) - m1 * dpsi(m1 * x) * chi(m2 * x))
    pa = dpsi(m2 * y) - big_a * dchi(m2 * y)
    qa = psi(m2 * y) - big_a * chi(m2 * y)
    pb = dpsi(m2 * y) - big_b * dchi(m2 * y)
    qb = psi(m2 * y) - big_b * chi(m2 * y)
    a = (psi(y) * pa - m2 * dpsi(y) * qa) / (xi * pa - m2 * dxi * qa)
    b = (m2 * psi(y) * pb - dpsi(y) * qb) / (m2 * xi * pb - dxi * qb)
    return a, b


def test_refractive_index_models():
    assert polystyrene(488.0).refractive_index == pytest.approx(1.605, abs=0.002)
    assert polystyrene(405.0).refractive_index == pytest.approx(1.627, abs=0.002)   # REFERENCES.md
    assert silica(488.0, colloidal_offset=0.0).refractive_index == pytest.approx(1.4630, abs=0.0005)  # Malitson
    assert 1.43 <= silica(488.0).refractive_index <= 1.445
    e = ev()
    assert (e.refractive_index, e.shell_refractive_index, e.shell_thickness_nm) == (1.38, 1.48, 5.0)
    with pytest.raises(ExoacqError, match="shell_thickness_nm"):
        Particle(1.4, 1.5, -1.0)
    with pytest.raises(ExoacqError, match="polarization"):
        Collection(polarization="circular")


@pytest.mark.parametrize("x", [0.05, 0.3, 1.0, 4.0, 12.0])
@pytest.mark.parametrize("m", [1.38 / 1.333, 1.438 / 1.333, 1.605 / 1.333])
def test_coated_sphere_reduces_to_miepython(m, x):
    n = terms_needed(x)
    a_ref, b_ref = miepython.an_bn(m, x, n)
    same_material_a, same_material_b = coated_sphere_coefficients(m, m, [0.6 * x], [x], n)
    no_shell_a, no_shell_b = coated_sphere_coefficients(m, 1.5 / 1.333, [x], [x], n)
    for a, b in ((same_material_a[0], same_material_b[0]), (no_shell_a[0], no_shell_b[0])):
        np.testing.assert_allclose(a, a_ref, rtol=1e-6)
        np.testing.assert_allclose(b, b_ref, rtol=1e-6)


@pytest.mark.parametrize("core_nm,outer_nm", [(40.0, 50.0), (140.0, 150.0), (390.0, 400.0)])
def test_coated_sphere_matches_aden_kerker(core_nm, outer_nm):
    k = 2 * math.pi * WATER / WAVELENGTH_NM
    m1, m2 = 1.38 / WATER, 1.48 / WATER
    x, y = k * core_nm / 2, k * outer_nm / 2
    n = terms_needed(y)
    a, b = coated_sphere_coefficients(m1, m2, [x], [y], n)
    a_ref, b_ref = aden_kerker(m1, m2, x, y, n)
    # the leading orders carry the scatter; compare them tightly
    np.testing.assert_allclose(a[0, :3], a_ref[:3], rtol=1e-8)
    np.testing.assert_allclose(b[0, :3], b_ref[:3], rtol=1e-8)
    np.testing.assert_allclose(a[0], a_ref, rtol=1e-5, atol=1e-15)


def test_homogeneous_particle_and_coated_paths_agree_on_collected_cross_section():
    d = np.array([30.0, 100.0, 300.0, 800.0])
    homogeneous = cross_section(d, Particle(1.45))
    same_material_shell = cross_section(d, Particle(1.45, 1.45, 8.0))
    np.testing.assert_allclose(same_material_shell, homogeneous, rtol=1e-6)


def test_amplitudes_match_miepython():
    m, x = 1.605 / WATER, 3.0
    mu = np.linspace(-1, 1, 11)
    a, b = mie_coefficients([2 * x / (2 * math.pi * WATER / WAVELENGTH_NM)], Particle(1.605),
                            wavelength_nm=WAVELENGTH_NM, medium_refractive_index=WATER)
    s1, s2 = amplitudes(a, b, mu)
    ref1, ref2 = miepython.S1_S2(m, x, mu, norm="wiscombe")   # unnormalised; sign convention differs
    np.testing.assert_allclose(np.abs(s1[0]), np.abs(ref1), rtol=1e-6)
    np.testing.assert_allclose(np.abs(s2[0]), np.abs(ref2), rtol=1e-6)


@pytest.mark.parametrize("polarization", POLARIZATIONS)
@pytest.mark.parametrize("particle", [polystyrene(WAVELENGTH_NM), ev()], ids=["PS", "EV"])
def test_full_sphere_gives_qsca_times_geometric_cross_section(polarization, particle):
    d = np.array([50.0, 200.0, 1000.0])
    full = cross_section(d, particle, Collection(center_deg=0.0, half_angle_deg=180.0, polarization=polarization))
    if particle.is_coated:   # Q_sca from the coefficients: 2/y^2 sum (2n+1)(|a|^2+|b|^2) (B&H eq. 4.61)
        k = 2 * math.pi * WATER / WAVELENGTH_NM
        a, b = mie_coefficients(d, particle, wavelength_nm=WAVELENGTH_NM, medium_refractive_index=WATER)
        n = np.arange(1, a.shape[1] + 1)
        qsca = 2 / (k * d / 2) ** 2 * ((2 * n + 1) * (np.abs(a) ** 2 + np.abs(b) ** 2)).sum(axis=1)
    else:
        qsca = np.array([miepython.efficiencies(particle.refractive_index / WATER, di, WAVELENGTH_NM / WATER)[1]
                         for di in d])
    np.testing.assert_allclose(full, qsca * math.pi * d**2 / 4, rtol=1e-6)
    # a side lens collects part of it; perpendicular polarisation more than parallel at 90 deg
    side = cross_section(d, particle, Collection(polarization=polarization))
    assert np.all(side < full)


def test_rayleigh_d6_and_dipole_pattern():
    k = 2 * math.pi * WATER / WAVELENGTH_NM
    m = 1.605 / WATER
    d = np.array([5.0, 10.0, 20.0])
    side = cross_section(d, Particle(1.605))
    assert side[1] / side[0] == pytest.approx(64.0, rel=2e-3)
    assert side[2] / side[1] == pytest.approx(64.0, rel=5e-3)
    # absolute value: dipole dC/dOmega = k^4 a^6 |(m^2-1)/(m^2+2)|^2 (1 - (e . s)^2), E along y:
    # integrate (1 - s_y^2) over the cone around x (90 deg) by brute force on a fine grid
    polarizability = ((m**2 - 1) / (m**2 + 2)) ** 2
    alpha = np.linspace(0, math.radians(40), 2001)
    beta = np.linspace(0, 2 * math.pi, 2001)
    aa, bb = np.meshgrid(alpha, beta, indexing="ij")
    s_y = np.sin(aa) * np.sin(bb)
    integrand = (1 - s_y**2) * np.sin(aa)
    solid = np.trapezoid(np.trapezoid(integrand, beta, axis=1), alpha)
    rayleigh = k**4 * (d[0] / 2) ** 6 * polarizability * solid
    assert side[0] == pytest.approx(rayleigh, rel=1e-3)


def test_small_coated_sphere_follows_rayleigh_coated_polarizability():
    """Core-shell spheres much smaller than the wavelength scatter as a dipole with the coated-sphere
    polarizability (Bohren & Huffman eq. 5.36); a fixed shell makes EVs deviate from d^6."""
    k = 2 * math.pi * WATER / WAVELENGTH_NM
    eps_core, eps_shell, eps_medium = 1.38**2, 1.48**2, WATER**2
    particle = Particle(1.38, 1.48, 1.0)
    d = np.array([6.0, 8.0])
    fraction = ((d - 2.0) / d) ** 3
    numerator = ((eps_shell - eps_medium) * (eps_core + 2 * eps_shell)
                 + fraction * (eps_core - eps_shell) * (eps_medium + 2 * eps_shell))
    denominator = ((eps_shell + 2 * eps_medium) * (eps_core + 2 * eps_shell)
                   + fraction * (2 * eps_shell - 2 * eps_medium) * (eps_core - eps_shell))
    alpha_over_4pi = (d / 2) ** 3 * numerator / denominator
    full = cross_section(d, particle, Collection(center_deg=0.0, half_angle_deg=180.0))
    np.testing.assert_allclose(full, 8 * math.pi / 3 * k**4 * alpha_over_4pi**2, rtol=2e-3)
    ev_side = cross_section(np.array([40.0, 80.0]), ev())
    assert 20.0 < ev_side[1] / ev_side[0] < 64.0 * 0.75   # well below d^6: the shell's share shrinks


def test_polarization_ordering_at_side_scatter():
    d = np.array([100.0])
    values = {p: cross_section(d, Particle(1.45), Collection(polarization=p))[0] for p in POLARIZATIONS}
    assert values["perpendicular"] > values["unpolarized"] > values["parallel"]
    assert values["unpolarized"] == pytest.approx((values["perpendicular"] + values["parallel"]) / 2, rel=1e-9)


def test_quadrature_converged_for_large_beads():
    d = np.array([1000.0])
    coarse = cross_section(d, polystyrene(WAVELENGTH_NM))
    fine = collected_cross_section_nm2(d, polystyrene(WAVELENGTH_NM), wavelength_nm=WAVELENGTH_NM,
                                       medium_refractive_index=WATER, collection=SIDE,
                                       polar_points=96, azimuth_points=128)
    assert coarse[0] == pytest.approx(fine[0], rel=1e-6)


def test_scatter_table_round_trip():
    table = ScatterTable(ev(), wavelength_nm=WAVELENGTH_NM, medium_refractive_index=WATER, collection=SIDE)
    d = np.array([30.0, 50.0, 87.0, 120.0, 200.0, 350.0])
    exact = cross_section(d, ev())
    np.testing.assert_allclose(table.cross_section_nm2(d), exact, rtol=2e-3)
    np.testing.assert_allclose(table.diameter_nm(exact), d, rtol=1e-3)
    assert np.isnan(table.diameter_nm([0.0, -1.0, 1e-12, 1e12])).all()
    assert np.isnan(table.cross_section_nm2([5.0, 5000.0])).all()
    # its speed is a figure of `exoacq bench flow` (scatter_inversions_per_s), not a timed test


def test_scatter_table_monotone_branch_ends_before_first_mie_oscillation():
    narrow = Collection(center_deg=90.0, half_angle_deg=10.0)   # a narrow cone shows the Mie ripples
    table = ScatterTable(polystyrene(WAVELENGTH_NM), wavelength_nm=WAVELENGTH_NM, medium_refractive_index=WATER,
                         collection=narrow, diameter_min_nm=50.0, diameter_max_nm=2000.0, points=300)
    assert 200.0 < table.monotone_max_nm < 1000.0
    i = int(np.searchsorted(table.diameters_nm, table.monotone_max_nm))
    assert np.all(np.diff(table.cross_sections_nm2[: i + 1]) > 0)
    assert table.cross_sections_nm2[i + 1] <= table.cross_sections_nm2[i]
    peak = table.cross_sections_nm2[i]
    assert np.isnan(table.diameter_nm(peak * 1.01))   # above the first maximum: not invertible
    assert table.diameter_nm(peak * 0.5) < table.monotone_max_nm
    # the default 40 deg cone averages the ripples out for silica and EVs up to 1 um
    wide = ScatterTable(silica(WAVELENGTH_NM), wavelength_nm=WAVELENGTH_NM, medium_refractive_index=WATER,
                        collection=SIDE)
    assert wide.monotone_max_nm == pytest.approx(1000.0)
