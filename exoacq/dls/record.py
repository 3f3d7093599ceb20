"""What a DLS measurement is, whatever it came from: a correlator file, a photon stream, a simulation.

Every reader (:mod:`exoacq.dls.io`) and the software correlator produce these;
the analysis (:mod:`exoacq.dls.analysis`) takes them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Correlation:
    """One correlation curve: one detector (channel) at one scattering angle.

    ``g2_minus_1`` is the normalised intensity autocorrelation minus 1 at ``lag_s``
    (Siegert: beta |g1|^2 for a Gaussian field). ``count_trace_*`` is the count rate
    during the measurement (for stability and dust checks); ``subruns`` holds the
    curves of sub-runs when the measurement was made of several (each a
    ``g2_minus_1`` array on the same lags), for dust rejection.
    ``vendor_cumulants`` holds the acquisition software's own cumulant results when
    the file carries them: ``{order: {"gamma_per_s", "diffusion_um2_s",
    "radius_nm", "pdi" (order >= 2, if known), ...}}``."""

    angle_deg: float
    lag_s: np.ndarray
    g2_minus_1: np.ndarray
    count_rate_hz: float | None = None
    count_trace_time_s: np.ndarray | None = None
    count_trace_hz: np.ndarray | None = None
    subruns: list[np.ndarray] = field(default_factory=list)
    vendor_cumulants: dict[int, dict[str, float]] = field(default_factory=dict)
    channel: str = ""


@dataclass
class DLSRecord:
    """A DLS measurement: the optics and the sample's medium, and its correlation curves."""

    wavelength_nm: float
    temperature_c: float
    #: Of the medium; None: water at temperature_c (IAPWS 2008).
    viscosity_mpa_s: float | None
    #: Of the medium (water ~1.330-1.332).
    refractive_index: float
    correlations: list[Correlation]
    duration_s: float | None = None
    source: str = ""
    #: "alv-asc", "sin", "ptu", "exoacq" (acquired here), "simulated"
    format: str = ""
    instrument: str = ""
    header: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
