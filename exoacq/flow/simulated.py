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
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from exoacq.flow.scatter import ev, polystyrene, silica
from exoacq.flow.simulate import Cytometer, FlowSimulator, Marker, Population

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
    ones = np.ones(len(cytometer.channels))
    while recorder.live_time_s < duration_s - 0.5 / cytometer.sample_rate_hz:
        start_s = recorder.live_time_s
        samples, _truth = simulator.traces(block_n)
        recorder.add(TraceBlock(samples, ones, 0 * ones, start_s, contiguous=True), limit_s=duration_s)
        if progress is not None:
            progress(recorder.live_time_s, duration_s)
    recorder.finish()
    return recorder
