"""The simulated sample behind a simulated nano flow cytometer: the tube the operator loads.

A flow instrument's ``[simulation]`` section (:class:`exoacq.flow.settings.FlowSimulation`)
describes the undiluted sample. :class:`SimulatedTube` turns it into detector
traces (:class:`exoacq.flow.simulate.FlowSimulator`) for a digitizer's simulated
twin, and "loads" the tube a run asks for: the sample at the run's dilution,
or one of the MIFlowCyt-EV controls (Welsh et al. 2020, J. Extracell. Vesicles
9:1713526) made from the same sample:

- ``buffer``: the diluent alone, no particles (the detector's noise only);
- ``unstained``: the same particles without antibodies (no marker fluorescence);
- ``isotype``: the particles with isotype-control antibodies: no specific
  binding, a stated non-specific fraction (``ISOTYPE_FRACTION``) at the markers'
  brightness;
- ``lysed``: after detergent, only detergent-resistant populations remain.

It also holds the preset populations: bead standards (silica and polystyrene size
ladders, MESF ladders) and an EV sample.
"""
from __future__ import annotations

import math
import threading
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from exoacq.errors import ConfigError
from exoacq.flow.scatter import Particle, ev, polystyrene, silica
from exoacq.flow.simulate import Cytometer, FlowSimulator, Marker, Population

#: The bead standards of calibrations/flow (the simulated ones and the calibration read the same files).
_BEADS = Path(__file__).resolve().parents[2] / "calibrations" / "flow"

#: Volts of one count of the simulated traces: a Keysight InfiniiVision's 16-bit WORD code at its default
#: 0.1 V/div (8 divisions over 65536 codes), as the simulated oscilloscope digitizes them.
SIMULATED_VOLTS_PER_COUNT = 8 * 0.1 / 65536
#: Of the particles, bound non-specifically by an isotype-control antibody (a stated assumption).
ISOTYPE_FRACTION = 0.005


def populations(simulation: Any, *, control: str | None = None, wavelength_nm: float = 488.0) -> list[Population]:
    """The simulated populations of a ``[simulation]`` section, as the given control tube holds them."""
    if control == "buffer":
        return []
    materials = {"ev": lambda: ev(), "silica": lambda: silica(wavelength_nm),
                 "polystyrene": lambda: polystyrene(wavelength_nm)}
    out = []
    for p in simulation.populations:
        if control == "unstained":
            markers: tuple[Marker, ...] = ()
        elif control == "isotype":
            markers = tuple(Marker(name, ISOTYPE_FRACTION, m.mesf_median) for name, m in p.markers.items())
        else:
            markers = tuple(Marker(name, m.positive_fraction, m.mesf_median) for name, m in p.markers.items())
        out.append(Population(p.name, materials[p.material](), p.diameter_nm, p.diameter_cv,
                              p.concentration_per_ml, markers=markers, detergent_resistant=p.detergent_resistant))
    return out


class SimulatedTube:
    """Detector traces of the loaded tube, ``source(n_samples) -> int16 [channel, n]`` (a digitizer
    simulator's waveform source); ``load(dilution, control)`` changes the tube."""

    def __init__(self, simulation: Any, cytometer: Cytometer | None = None):
        self.simulation = simulation
        self.cytometer = cytometer or Cytometer(flow_rate_ul_min=simulation.flow_rate_ul_min)
        self.sample_rate_hz = self.cytometer.sample_rate_hz
        self.channels = list(self.cytometer.channels)
        self._lock = threading.Lock()
        self._seed = np.random.SeedSequence(simulation.seed)
        self.dilution, self.control = 1.0, None
        self._simulator = self._make(1.0, None)

    def _make(self, dilution: float, control: str | None) -> FlowSimulator:
        seed = int(self._seed.spawn(1)[0].generate_state(1)[0])  # a fresh, reproducible stream per tube
        return FlowSimulator(populations(self.simulation, control=control,
                                         wavelength_nm=self.cytometer.wavelength_nm),
                             self.cytometer, dilution=dilution, seed=seed, lysed=control == "lysed")

    def load(self, dilution: float = 1.0, control: str | None = None) -> None:
        """Load the tube a run measures: the sample at ``dilution``, or a control made from it."""
        simulator = self._make(dilution, control)
        with self._lock:
            self._simulator, self.dilution, self.control = simulator, dilution, control

    def __call__(self, n_samples: int) -> np.ndarray:
        with self._lock:
            block, _truth = self._simulator.traces(int(n_samples))
        return block

    @property
    def simulator(self) -> FlowSimulator:
        return self._simulator


def record(simulator: FlowSimulator, duration_s: float, settings: Any, *, block_s: float = 0.1,
           progress: Any = None) -> Any:
    """Acquire ``duration_s`` of a simulated sample through the pulse detector, as a daemon run does
    (without a digitizer in between); the :class:`~exoacq.flow.recording.Recorder` holds the events."""
    from exoacq.devices import TraceBlock
    from exoacq.flow.recording import Recorder

    cytometer = simulator.cytometer
    recorder = Recorder(list(cytometer.channels), cytometer.sample_rate_hz, settings)
    block_n = max(1000, int(round(block_s * cytometer.sample_rate_hz)))
    scale = np.full(len(cytometer.channels), SIMULATED_VOLTS_PER_COUNT)
    while recorder.live_time_s < duration_s - 0.5 / cytometer.sample_rate_hz:
        start_s = recorder.live_time_s
        samples, _truth = simulator.traces(block_n)
        recorder.add(TraceBlock(samples, scale, 0 * scale, start_s, contiguous=True), limit_s=duration_s)
        if progress is not None:
            progress(recorder.live_time_s, duration_s)
    recorder.finish()
    return recorder


# -- presets ----------------------------------------------------------------------------------
def _log_sd(cv_percent: float) -> float:
    """SD of ln d of a log-normal with this relative SD (percent): sqrt(ln(1 + cv^2))."""
    return math.sqrt(math.log1p((cv_percent / 100.0) ** 2))


def silica_beads(wavelength_nm: float = 488.0, *, diameters_nm: tuple[float, ...] | None = None,
                 diameter_cv: float | None = None, concentration_per_ml: float = 2e7,
                 bead_file: Path | str = _BEADS / "beads-silica.toml") -> list[Population]:
    """A silica size ladder (detergent resistant) as in ``bead_file`` (calibrations/flow/
    beads-silica.toml: 80, 100, 150, 200, 300, 500 nm, CV 8-4 %, colloidal silica n = 1.438 at
    488 nm), read with :func:`exoacq.flow.calibration.load_bead_set` so that the simulation and
    the calibration agree; without the file 100/150/200/300/500 nm, CV 3 %. ``diameter_cv``
    (SD of ln d) overrides the file's CVs."""
    bead_file = Path(bead_file)
    particle = silica(wavelength_nm)
    if diameters_nm is not None:
        sizes, cvs = [float(d) for d in diameters_nm], [_log_sd(3.0)] * len(diameters_nm)
    elif bead_file.exists():
        from exoacq.flow.calibration import load_bead_set
        beads = load_bead_set(bead_file)
        particle = beads.particle(wavelength_nm)
        sizes = list(beads.diameters_nm)
        cvs = [_log_sd(c) for c in beads.diameter_cv_percent] or [_log_sd(3.0)] * len(sizes)
        if len(cvs) != len(sizes):
            raise ConfigError(f"{bead_file}: diameter_cv_percent has {len(cvs)} values for {len(sizes)} diameters")
    else:
        sizes, cvs = [100.0, 150.0, 200.0, 300.0, 500.0], [_log_sd(3.0)] * 5
    return [Population(f"silica {d:g} nm", particle, d, diameter_cv if diameter_cv is not None else cv,
                       concentration_per_ml, detergent_resistant=True) for d, cv in zip(sizes, cvs)]


def polystyrene_beads(wavelength_nm: float = 488.0, *, diameters_nm: tuple[float, ...] = (80.0, 100.0, 125.0, 150.0),
                      diameter_cv: float = 0.03, concentration_per_ml: float = 2e7) -> list[Population]:
    """Polystyrene bead mix (detergent resistant; Sultanova 2009 refractive index). The default
    sizes stay below saturation on the default :class:`Cytometer` (200 nm polystyrene does not)."""
    particle = polystyrene(wavelength_nm)
    return [Population(f"polystyrene {d:g} nm", particle, float(d), diameter_cv, concentration_per_ml,
                       detergent_resistant=True) for d in diameters_nm]


#: The reference fluorochrome of each default fluorescence channel (calibrations/flow/beads-mesf.toml).
FLUOROCHROME_OF_CHANNEL = {"FL1": "FITC", "FL2": "PE"}


def mesf_beads(channel: str = "FL1", *, mesf: tuple[float, ...] | None = None, mesf_cv: float = 0.08,
               diameter_nm: float | None = None, wavelength_nm: float = 488.0, concentration_per_ml: float = 2e7,
               bead_file: Path | str = _BEADS / "beads-mesf.toml") -> list[Population]:
    """An MESF bead ladder for one fluorescence channel: one polystyrene population per level
    (0 = the blank bead), each with its MESF per bead (not scaled with area), spread ``mesf_cv``
    (SD of ln MESF). Levels and bead size from ``bead_file`` (the [mesf] list of the channel's
    fluorochrome, FITC for FL1 and PE for FL2; bead_diameter_um, 2 um: such beads saturate the
    default side scatter, as micron beads do on a nano cytometer), else 0/300/1000/3000/10000/
    30000 MESF on 100 nm beads."""
    bead_file = Path(bead_file)
    levels, size = mesf, diameter_nm
    if (levels is None or size is None) and bead_file.exists():
        from exoacq.flow.calibration import load_bead_set
        beads = load_bead_set(bead_file)
        fluorochrome = FLUOROCHROME_OF_CHANNEL.get(channel, channel)
        if levels is None:
            if fluorochrome not in beads.mesf:
                raise ConfigError(f"{bead_file}: no [mesf] {fluorochrome} ladder for channel {channel} "
                                  f"(has {', '.join(beads.mesf)})")
            levels = tuple(beads.mesf[fluorochrome])
        if size is None:
            size_um = tomllib.loads(bead_file.read_text(encoding="utf-8"))["standard"].get("bead_diameter_um")
            size = 1000.0 * float(size_um) if size_um else None
    levels = levels if levels is not None else (0.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0)
    size = size if size is not None else 100.0
    particle = polystyrene(wavelength_nm)
    out = []
    for level in levels:
        markers = () if level <= 0 else (Marker(channel, 1.0, float(level), mesf_cv, scales_with_area=False),)
        out.append(Population(f"MESF {level:g} {channel}", particle, float(size), 0.03, concentration_per_ml,
                              markers=markers, detergent_resistant=True))
    return out


def ev_sample(concentration_per_ml: float = 2e10, *, diameter_nm: float = 80.0, diameter_cv: float = 0.35,
              cd63_fraction: float = 0.40, cd81_fraction: float = 0.25, mesf_median: float = 600.0,
              mesf_cv: float = 0.5, particle: Particle | None = None, name: str = "EVs") -> list[Population]:
    """Extracellular vesicles: core-shell spheres (:func:`exoacq.flow.scatter.ev`), log-normal
    diameters (median 80 nm, SD of ln d 0.35: ~3 % below 40 nm, ~25 % below the default
    detection limit, ~63 nm), CD63+ and CD81+ fractions (independent), not detergent resistant."""
    markers = tuple(Marker(n, f, mesf_median, mesf_cv) for n, f in (("CD63", cd63_fraction), ("CD81", cd81_fraction)))
    return [Population(name, particle if particle is not None else ev(), diameter_nm, diameter_cv,
                       concentration_per_ml, markers=markers, detergent_resistant=False)]
