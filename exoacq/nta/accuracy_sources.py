"""The two simulated instruments of ``exoacq bench accuracy``, behind one small interface.

* ``exoacq``: exoacq's own simulated camera (exoacq.drivers.simulated_nta): Gaussian light sheet,
  Gaussian PSF widening with defocus, Rayleigh (d^6) scatter, shot and read noise, 12 bits
  (8 bits at the dim level).
* ``emccd``: an independently written one (exoacq.nta.simulate_emccd, which shares no code with the
  first): flat-top light sheet, Airy PSF, Mie scatter into the objective's cone, EMCCD excess noise,
  fixed-pattern noise and hot pixels, 8 bits with saturation, no exposure in its videos.

Camera levels, as an operator sets them:

* ``beads``: the largest particles of the sample as bright as 100 nm calibration beads
  at the simulator's default level (the largest are then never clipped);
* ``dim``: 100 nm particles peak at :data:`DIM_PEAK_SIGMAS` x the background noise SD, and
  150 nm ones (8 x to 11 x brighter) reach saturation in the sheet's centre.

Exposures: ``short`` (2 ms: hardly any motion blur) and ``whole`` (the whole 40 ms frame
interval at 25 frames/s). The analysis is never told which (exoacq.nta.steps.estimate_blur).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

CAMERA = {"width": 640, "height": 480, "pixel_size_um": 0.166, "frame_rate_hz": 25.0}
EXPOSURES_MS = {"short": 2.0, "whole": 40.0}
#: The dim level: 100 nm particles at the sheet centre peak this many noise SDs above the background.
DIM_PEAK_SIGMAS = 6.0


@dataclass(frozen=True)
class Component:
    diameter_nm: float
    number_fraction: float = 1.0


@dataclass
class Recording:
    """A simulated video: frames (generated lazily) and the truth of its sample."""

    frames: Iterator[np.ndarray]
    frame_rate_hz: float
    pixel_size_um: float
    width: int
    height: int
    #: concentration_per_ml (realised in the simulation box), mean_nm and d50_nm of the particles in it
    truth: dict[str, float]


class ExoacqSimulator:
    name = "exoacq"
    BEAD_PHOTONS_100NM = 5000.0  # photoelectrons of a 100 nm bead in 15 ms at the sheet centre (default)
    #: 8-bit camera at 1 ADU per electron: noise ~ 4.9 ADU over a 20 e background; 100 nm at 600 e peaks at
    #: ~ 6 SD, 150 nm (11.4 x) saturate
    DIM = {"bit_depth": 8, "gain_adu_per_e": 1.0, "offset_adu": 16.0}
    DIM_PHOTONS_100NM = 600.0

    def record(self, components: tuple[Component, ...], concentration_per_ml: float, *, level: str, exposure: str,
               seconds: float, seed: int, temperature_c: float = 25.0,
               drift_um_s: tuple[float, float] = (0.0, 0.0)) -> Recording:
        from exoacq.drivers.simulated_nta import SampleComponent, make_simulated_nta

        exposure_ms = EXPOSURES_MS[exposure]
        largest = max(c.diameter_nm for c in components)
        if level == "beads":
            photons, camera = self.BEAD_PHOTONS_100NM * (100.0 / largest) ** 6, {}
        else:
            photons, camera = self.DIM_PHOTONS_100NM, self.DIM
        camera_obj, _, sample = make_simulated_nta(
            [SampleComponent(c.diameter_nm, number_fraction=c.number_fraction) for c in components],
            concentration_per_ml, illumination_mw=None, temperature_c=temperature_c, drift_um_s=drift_um_s,
            seed=seed, realtime=False, exposure_ms=exposure_ms,
            photons_100nm=photons * 15.0 / exposure_ms,  # the level held whatever the exposure (the gain)
            **CAMERA, **camera)
        camera_obj.connect()
        camera_obj.start()
        n_frames = int(round(seconds * CAMERA["frame_rate_hz"]))

        def frames() -> Iterator[np.ndarray]:
            try:
                for _ in range(n_frames):
                    frame = np.empty((camera_obj.height, camera_obj.width), camera_obj.dtype)
                    camera_obj.fill(frame)
                    yield frame
            finally:
                camera_obj.close()

        box_ml = math.prod(sample.box_um) * 1e-12
        truth = {"concentration_per_ml": len(sample) / box_ml, "mean_nm": float(sample.diameters_nm.mean()),
                 "d50_nm": float(np.median(sample.diameters_nm))}
        return Recording(frames(), CAMERA["frame_rate_hz"], CAMERA["pixel_size_um"], CAMERA["width"],
                         CAMERA["height"], truth)


class EMCCDSimulator:
    name = "emccd"
    #: The simulator's default level: a 100 nm particle peaks at 60 counts (12 noise SDs), never clipped.
    BEAD_LEVEL = 60.0

    def record(self, components: tuple[Component, ...], concentration_per_ml: float, *, level: str, exposure: str,
               seconds: float, seed: int, temperature_c: float = 25.0,
               drift_um_s: tuple[float, float] = (0.0, 0.0)) -> Recording:
        from exoacq.nta import simulate_emccd as sim

        camera = sim.EMCCDCamera(exposure_ms=EXPOSURES_MS[exposure], seed=seed, **CAMERA)
        if level == "beads":
            optics = sim.Optics()
            largest = max(c.diameter_nm for c in components)
            ratio = (sim.collected_cross_section_nm2(largest, 1.59, optics)
                     / sim.collected_cross_section_nm2(100.0, 1.59, optics))
            camera = dataclasses.replace(camera, camera_level=self.BEAD_LEVEL / ratio)
        else:
            camera = dataclasses.replace(camera, camera_level=DIM_PEAK_SIGMAS * sim.noise_sd_counts(camera))
        recording = sim.render([sim.Population(c.diameter_nm, c.number_fraction) for c in components],
                               concentration_per_ml, camera=camera, temperature_c=temperature_c,
                               drift_um_s=drift_um_s, frames=int(round(seconds * CAMERA["frame_rate_hz"])), seed=seed)
        t = recording.truth
        truth = {"concentration_per_ml": t["concentration_per_ml"], "mean_nm": t["number_mean_nm"],
                 "d50_nm": t["d50_nm"]}
        return Recording(recording.frames(), CAMERA["frame_rate_hz"], CAMERA["pixel_size_um"], CAMERA["width"],
                         CAMERA["height"], truth)


SIMULATORS: dict[str, Any] = {"exoacq": ExoacqSimulator, "emccd": EMCCDSimulator}
