"""Physical constants and formulas, in one place, each with its source.

Units are in the names: ``_k`` kelvin, ``_c`` degrees Celsius, ``_nm``,
``_um``, ``_mpa_s`` (mPa s = cP), ``_um2_s`` (um^2/s).
"""
from __future__ import annotations

import math

import numpy as np

#: Boltzmann constant, exact since the 2019 SI redefinition (J/K).
BOLTZMANN_J_K = 1.380649e-23
#: 0 degC in kelvin.
ZERO_CELSIUS_K = 273.15

# IAPWS 2008 (Huber et al. 2009, J. Phys. Chem. Ref. Data 38:101-125),
# reference constants and Tables 2 and 3.
_T_STAR_K = 647.096
_RHO_STAR_KG_M3 = 322.0
_MU_STAR_PA_S = 1.0e-6
_H0 = (1.67752, 2.20462, 0.6366564, -0.241605)
#: H[i][j]: i is the power of (1/Tbar - 1), j the power of (rhobar - 1).
_H1 = (
    (0.520094, 0.222531, -0.281378, 0.161913, -0.0325372, 0.0, 0.0),
    (0.0850895, 0.999115, -0.906851, 0.257399, 0.0, 0.0, 0.0),
    (-1.08374, 1.88797, -0.772479, 0.0, 0.0, 0.0, 0.0),
    (-0.289555, 1.26613, -0.489837, 0.0, 0.0698452, 0.0, -0.00435673),
    (0.0, 0.0, -0.257040, 0.0, 0.0, 0.00872102, 0.0),
    (0.0, 0.120573, 0.0, 0.0, 0.0, 0.0, -0.000593264),
)


def celsius_to_kelvin(temperature_c: float) -> float:
    return temperature_c + ZERO_CELSIUS_K


def water_density_kg_m3(temperature_c: float) -> float:
    """Density of air-free water at 101.325 kPa, 0-40 degC.

    Tanaka et al. 2001, Metrologia 38:301-309 (the CIPM recommended table),
    within 1 ppm over 0-40 degC.
    """
    a1, a2, a3, a4, a5 = -3.983035, 301.797, 522528.9, 69.34881, 999.974950
    t = temperature_c
    return a5 * (1.0 - (t + a1) ** 2 * (t + a2) / (a3 * (t + a4)))


def water_viscosity_iapws_mpa_s(temperature_c: float, density_kg_m3: float | None = None) -> float:
    """Dynamic viscosity of liquid water in mPa s (= cP).

    IAPWS 2008 formulation (Huber et al. 2009, J. Phys. Chem. Ref. Data
    38:101-125), eq. 10-12 with mu2 = 1 (the critical enhancement is below
    1e-6 outside 645-650 K). The density defaults to Tanaka 2001 at
    atmospheric pressure. Check value of the release: 889.735100 uPa s at
    298.15 K and 998 kg/m^3.
    """
    if not -20.0 <= temperature_c <= 150.0:
        raise ValueError(f"temperature {temperature_c} degC is outside the liquid-water range -20..150 degC")
    rho = water_density_kg_m3(temperature_c) if density_kg_m3 is None else density_kg_m3
    t_bar = celsius_to_kelvin(temperature_c) / _T_STAR_K
    rho_bar = rho / _RHO_STAR_KG_M3
    mu0 = 100.0 * math.sqrt(t_bar) / sum(h / t_bar**i for i, h in enumerate(_H0))
    x, y = 1.0 / t_bar - 1.0, rho_bar - 1.0
    mu1 = math.exp(rho_bar * sum(
        h * x**i * y**j for i, row in enumerate(_H1) for j, h in enumerate(row) if h
    ))
    return mu0 * mu1 * _MU_STAR_PA_S * 1e3


def stokes_einstein_diffusion_um2_s(diameter_nm, temperature_c: float, viscosity_mpa_s: float):
    """Translational diffusion coefficient of a sphere, D = kB T / (3 pi eta d).

    Einstein 1905; accepts scalars or numpy arrays of diameters.
    """
    t_k = celsius_to_kelvin(temperature_c)
    d_m = np.asarray(diameter_nm, dtype=float) * 1e-9
    d_m2_s = BOLTZMANN_J_K * t_k / (3.0 * math.pi * viscosity_mpa_s * 1e-3 * d_m)
    result = d_m2_s * 1e12
    return float(result) if np.ndim(result) == 0 else result


def stokes_einstein_diameter_nm(diffusion_um2_s, temperature_c: float, viscosity_mpa_s: float):
    """Hydrodynamic diameter from a diffusion coefficient (inverse of Stokes-Einstein)."""
    t_k = celsius_to_kelvin(temperature_c)
    d_m2_s = np.asarray(diffusion_um2_s, dtype=float) * 1e-12
    with np.errstate(divide="ignore"):
        d_m = BOLTZMANN_J_K * t_k / (3.0 * math.pi * viscosity_mpa_s * 1e-3 * d_m2_s)
    result = d_m * 1e9
    return float(result) if np.ndim(result) == 0 else result


#: A recording whose start and end temperatures differ by more than this (C) is said to have drifted: it is
#: sized at the mean, and water's viscosity changes ~2.4 % per C near 25 C (IAPWS 2008), sizes as much.
MAX_RECORDING_TEMPERATURE_CHANGE_C = 0.5


def temperature_drift_warning(start_c: float, end_c: float, recording: str) -> str | None:
    """The warning for a ``recording`` ("capture", "measurement") whose temperature moved by more than
    :data:`MAX_RECORDING_TEMPERATURE_CHANGE_C` between its start and end readings; None if it held."""
    if abs(end_c - start_c) <= MAX_RECORDING_TEMPERATURE_CHANGE_C:
        return None
    return (f"the sample's temperature changed from {start_c:.2f} to {end_c:.2f} C during the {recording}: sized at "
            f"their mean (water's viscosity changes ~2.4 % per C, sizes as much); let it settle before the next "
            f"{recording}")


def rayleigh_polarizability_factor(particle_index: float, medium_index: float) -> float:
    """|(m^2 - 1)/(m^2 + 2)|^2 with m = n_particle / n_medium (Rayleigh scattering).

    Scattered power of a sphere much smaller than the wavelength is
    proportional to d^6 times this factor (Bohren & Huffman 1983, ch. 5).
    """
    m2 = (particle_index / medium_index) ** 2
    return ((m2 - 1.0) / (m2 + 2.0)) ** 2
