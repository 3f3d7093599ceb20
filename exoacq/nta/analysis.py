"""NTA analysis: plain functions and one streaming tracker over trackpy.

The same code serves the daemon's tracking core (frame by frame, as frames
arrive) and offline analysis; what it is told (TrackingParameters, the threshold
chosen per video) and the detection it starts from are exoacq.nta.parameters.
Methods:

* detection: trackpy.locate (Crocker & Grier 1996, J. Colloid Interface Sci.
  179:298) with its bandpass and centroid refinement;
* linking: trackpy's incremental ``Linker`` (Crocker-Grier), one frame at a
  time; a missing frame ends every track, so steps always span one interval.
  The search range is chosen from the first ``PILOT_FRAMES`` frames' tracks
  unless given, and those frames linked again at it until the range their
  tracks ask for settles (a fixed point free of the mislinks of a wide range
  in a dense field: :meth:`StreamingTracker._choose_search_range`);
* per track, O(1) running sums: steps, squared steps, products of consecutive
  steps (for the covariance-based D of exoacq.nta.steps), masses; the
  ensemble flow drift is removed from them at the end; the reported D adds
  what the ensemble's step covariances beyond lag 1 carry (position errors
  lasting several frames, as in compressed video:
  exoacq.nta.steps.step_correlation_correction_um2_s);
* the reported size distribution: exoacq.nta.distribution (deconvolution over
  track lengths, detection-depth correction). The per-track diameter
  (exoacq.nta.track_numbers) serves the running statistics of progress
  reports and the per-track table.
"""
from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

from exoacq.nta import steps
from exoacq.nta.distribution import number_histogram, size_distribution
from exoacq.nta.parameters import SEARCH_RANGE_SIGMAS, TrackingParameters, at_threshold, trackpy, warm_up_detectors
from exoacq.nta.track_numbers import diameters_nm, diffusion_um2_s, rejection, running_histogram, size_statistics
from exoacq.nta.track_sums import EnsembleDrift, TrackSums

#: trackpy's Linker numbers points and tracks with class-level counters that each new Linker resets: two
#: trackers linking in one process (threads of a Dask worker, the accuracy bench's trackers at several
#: thresholds) would give each other's particles the same ids. Each tracker keeps its own counters and
#: puts them in place under this lock while it links.
_TRACKPY_COUNTERS = threading.Lock()
#: Running (progress) statistics use tracks of at least this many points unless min_track_length is set.
RUNNING_MIN_TRACK_LENGTH = 10
#: Automatic search range: frames held to choose it, tracks needed, smallest range.
PILOT_FRAMES = 100
PILOT_MIN_TRACKS = 20
#: The pilot judges the range on tracks at least this many times brighter than the threshold (when there are
#: PILOT_MIN_TRACKS of them): dense dim features link by chance at a wide range and would widen it further.
PILOT_BRIGHTNESS = 1.5
MIN_SEARCH_RANGE_PX = 3.0
#: The pilot links its frames again at the range it chose while their tracks ask for one narrower by more than
#: this fraction, at most PILOT_ITERATIONS times (StreamingTracker._choose_search_range). Smaller changes are
#: within the range's own margin (it covers twice the D95: sqrt(2) wider than that D's steps need) and the
#: scatter of a few hundred tracks' 95th percentile; mislinks narrow it by 20-40 % a step.
PILOT_CONVERGENCE = 0.15
PILOT_ITERATIONS = 6
#: Live track tails (viewers): positions per track.
TAIL_POINTS = 10


def warm_up(linker: bool = True) -> None:
    """Compile the numba kernels of both detectors before the first frame needs them; with ``linker``, trackpy's
    numba subnet linker too (:func:`warm_up_linker`; a locate worker does not link)."""
    warm_up_detectors()
    if linker:
        warm_up_linker()


def cache_subnet_solver() -> None:
    """Let numba keep trackpy's compiled subnet solver on disk (numba's own cache, beside trackpy's source or in
    numba's user cache directory), so that a new process loads it instead of compiling it again. trackpy
    compiles it without caching; where no cache directory is writable, it is compiled in memory as before."""
    from trackpy.linking import subnetlinker

    solver = getattr(subnetlinker, "_numba_subnet_norecur", None)
    if type(getattr(solver, "_cache", None)).__name__ != "NullCache":  # not a numba dispatcher, or caching already
        return
    try:
        solver.enable_caching()
    except Exception:  # noqa: BLE001 - no writable cache location: compile in memory, as trackpy does
        pass


def warm_up_linker() -> None:
    """Import trackpy and compile its numba subnet linker (about 1 s; loaded in ~0.2 s from numba's cache
    once :func:`cache_subnet_solver` has kept it) before a run's first crowded frame needs it: trackpy solves
    subnets of up to 4 x 4 candidates in Python and compiles the numba solver at the first larger one."""
    cache_subnet_solver()
    tracker = StreamingTracker(TrackingParameters(25.0, 0.0, 0.1, 25.0, 0.89, minmass=0.0, search_range_px=3.0))
    y = np.arange(6, dtype=float)  # six particles 1 px apart moving 0.5 px: one 6 x 6 subnet
    for n in range(3):
        tracker.add_frame(n, {"y": 10.0 + y + 0.5 * n, "x": np.full(6, 10.0), "mass": np.ones(6)})


@dataclass
class StreamingTracker:
    """Links features frame by frame and keeps per-track step sums (O(1) per feature).

    Feed :meth:`add_frame` in frame order; :meth:`summary` gives running or
    final statistics; :meth:`tracks_table` the per-track table.
    """

    params: TrackingParameters
    _linker: Any = None  # trackpy.linking.Linker
    _id_offset: int = 0
    _ids_used: int = 0
    _last_frame: int | None = None
    _tracks: TrackSums = field(default_factory=TrackSums)
    _drift: EnsembleDrift = field(default_factory=lambda: EnsembleDrift())
    _rows: list[np.ndarray] = field(default_factory=list)
    features_per_frame: list[int] = field(default_factory=list)
    linking_resets: int = 0
    _auto_min_track_length: int | None = None
    _pilot: list = field(default_factory=list)
    #: while the pilot holds frames: the same frames linked at the largest range (provisional progress)
    _provisional: "StreamingTracker | None" = None
    #: this tracker's own trackpy id counters (see _TRACKPY_COUNTERS)
    _counters: tuple | None = None
    #: trackpy's track id (+ offset) -> this tracker's particle id (see _label)
    _labels: dict[int, int] = field(default_factory=dict)

    def add_frame(self, frame_number: int, features: Mapping[str, Any]) -> None:
        """Link one frame's features (a DataFrame or a mapping of arrays with y, x, mass in px). Features
        below ``minmass`` (down to :attr:`TrackingParameters.link_minmass`) are linked but not counted."""
        self.features_per_frame.append(int(np.count_nonzero(at_threshold(features["mass"], self.params.minmass))))
        if self.params.auto_search_range:  # pilot: hold the first frames until the range is chosen
            held = {k: np.asarray(features[k], float) for k in ("y", "x", "mass", "raw_max") if k in features}
            self._pilot.append((frame_number, held))
            if self._provisional is None:  # linked at the largest range meanwhile: progress from the first frame
                self._provisional = StreamingTracker(dataclasses.replace(
                    self.params, auto_search_range=False, min_track_length=None))
            self._provisional.add_frame(frame_number, held)
            if len(self._pilot) >= PILOT_FRAMES:
                self._choose_search_range()
            return
        self._link(frame_number, features)

    def finish(self) -> None:
        """The video has ended: link frames still held for the search range (a video shorter than the pilot)."""
        if self._pilot:
            self._choose_search_range()

    def _choose_search_range(self) -> None:
        """Link the held frames at the largest range; choose the range from their tracks; link them again.

        The range covers the 2-D one-frame steps (all but 0.2 %) of a particle twice as mobile as
        the 95th percentile of the tracks' D (CVE, tracks of >= 10 points): half the diameter of the
        small end of the sample. Never above the largest range; with fewer than
        PILOT_MIN_TRACKS tracks, the largest range stays.

        The range is a fixed point: the tracks linked at the chosen range must ask for about the same range.
        Linked at too wide a range in a dense field (a search disc that reaches the next features:
        the largest range is that of the smallest particle the user expects), a particle whose
        feature is lost for a frame is joined to a neighbour, and those jumps inflate the 95th
        percentile, hence the range (a feedback of mislinks). So the held frames are linked again
        at the chosen range, and again at the range their tracks then ask for, while it is narrower by
        more than PILOT_CONVERGENCE (at most PILOT_ITERATIONS times). The iteration only narrows the
        range, and stops where the tracks are the particles' own: a range that covers their steps
        5 SDs out (SEARCH_RANGE_SIGMAS at twice the D) truncates no real step, so it does not collapse.
        The held frames linked last at the range chosen are this tracker's start (they would link the
        same again).
        """
        frames, self._pilot = self._pilot, []
        pilot, self._provisional = self._provisional, None  # the held frames, linked at the largest range
        linked_at = pilot.params.search_range_px
        chosen = round(self._range_from_tracks(pilot.tracks_table()) or self.params.search_range_px, 2)
        for _ in range(PILOT_ITERATIONS):
            if chosen != linked_at:
                pilot = StreamingTracker(dataclasses.replace(self.params, search_range_px=chosen,
                                                             auto_search_range=False, min_track_length=None))
                for number, features in frames:
                    pilot._link(number, features)
                linked_at = chosen
            narrower = self._range_from_tracks(pilot.tracks_table())
            if narrower is None or narrower > chosen * (1.0 - PILOT_CONVERGENCE):
                break
            chosen = round(narrower, 2)
        self.params = dataclasses.replace(self.params, search_range_px=chosen, auto_search_range=False)
        if linked_at == chosen:
            self._take_links(pilot)
        else:
            for number, features in frames:
                self._link(number, features)

    #: What :meth:`_link` changes: a tracker that linked the same frames at the same range holds them.
    _LINK_STATE = ("_linker", "_id_offset", "_ids_used", "_last_frame", "_tracks", "_drift", "_rows",
                   "linking_resets", "_counters", "_labels")

    def _take_links(self, other: "StreamingTracker") -> None:
        for name in self._LINK_STATE:
            setattr(self, name, getattr(other, name))

    def _range_from_tracks(self, table: pd.DataFrame) -> float | None:
        """The search range the pilot's tracks ask for (see :meth:`_choose_search_range`), within
        MIN_SEARCH_RANGE_PX and the largest range; None with fewer than PILOT_MIN_TRACKS tracks."""
        p = self.params
        table = table.loc[(table["length_frames"] >= RUNNING_MIN_TRACK_LENGTH) & (table["rejected"] == "")]
        bright = table.loc[table["mean_mass"] >= PILOT_BRIGHTNESS * (p.minmass or 0.0)]
        if len(bright) >= PILOT_MIN_TRACKS:  # features near the threshold (noise, far from the sheet) link by chance
            table = bright
        d = table["diffusion_um2_s"].to_numpy(float)
        d = d[np.isfinite(d)]
        if d.size < PILOT_MIN_TRACKS or not np.percentile(d, 95) > 0:
            return None
        step_um = math.sqrt(2.0 * 2.0 * float(np.percentile(d, 95)) * p.frame_interval_s)
        return min(p.search_range_px, max(SEARCH_RANGE_SIGMAS * step_um / p.pixel_size_um, MIN_SEARCH_RANGE_PX))

    def _link(self, frame_number: int, features: Mapping[str, Any]) -> None:
        count = len(features["x"])
        gap = self._last_frame is not None and frame_number != self._last_frame + 1
        self._last_frame = frame_number
        if count == 0 or gap:
            self._end_linking()
            if count == 0:
                return
        coords = np.column_stack([np.asarray(features["y"], float), np.asarray(features["x"], float)])
        if self._linker is None:
            trackpy()  # imported (and quieted) here, at the first link
        from trackpy.linking import Linker
        from trackpy.linking.utils import Point, SubnetOversizeException, TrackUnstored

        with _TRACKPY_COUNTERS:  # trackpy numbers points and tracks with class-level counters
            if self._counters is not None:
                Point.counter, TrackUnstored.counter = self._counters
            try:
                if self._linker is None:
                    self._linker = Linker(self.params.search_range_px, memory=0,
                                          adaptive_stop=0.5, adaptive_step=0.8)
                    self._linker.init_level(coords, frame_number)
                else:
                    self._linker.next_level(coords, frame_number)
            except SubnetOversizeException:
                self.linking_resets += 1
                self._end_linking()
                self._linker = Linker(self.params.search_range_px, memory=0)
                self._linker.init_level(coords, frame_number)
            self._counters = (Point.counter, TrackUnstored.counter)
            ids = np.asarray(self._linker.particle_ids, dtype=np.int64) + self._id_offset
        self._ids_used = max(self._ids_used, int(ids.max()) + 1 - self._id_offset) if ids.size else self._ids_used
        ids = self._label(ids)
        xs, ys = coords[:, 1], coords[:, 0]
        mass = np.asarray(features["mass"], float)
        saturated = None
        if self.params.saturation_counts is not None and "raw_max" in features:
            saturated = np.asarray(features["raw_max"], float) >= self.params.saturation_counts
        dx, dy = self._tracks.update(frame_number, ids, xs, ys, mass, self.params.pixel_size_um, saturated)
        self._drift.add(frame_number, dx, dy)
        self._rows.append(np.column_stack([np.full(len(ids), frame_number), ids, xs, ys, mass]))

    def _label(self, trackpy_ids: np.ndarray) -> np.ndarray:
        """Particle ids numbered in the order tracks first appear (frame, then the features' order).

        trackpy numbers the tracks born in one frame in the iteration order of sets of its Point
        objects, which hash by memory address: the same frames linked in another process may swap
        their ids. Renumbered here, the same features always give the same ids (a re-processed
        run's tracks.csv equals the live one to the byte)."""
        labels = np.empty_like(trackpy_ids)
        for i, raw in enumerate(trackpy_ids.tolist()):
            label = self._labels.get(raw)
            if label is None:
                label = self._labels[raw] = len(self._labels)
            labels[i] = label
        return labels

    def _end_linking(self) -> None:
        """Close every open track: the next features start new particle ids."""
        self._linker = None
        self._id_offset += self._ids_used
        self._ids_used = 0

    def min_track_length(self) -> int:
        """The configured minimum track length, else the one the last final summary chose from the data,
        else RUNNING_MIN_TRACK_LENGTH."""
        return self.params.min_track_length or self._auto_min_track_length or RUNNING_MIN_TRACK_LENGTH

    def tracks_table(self) -> pd.DataFrame:
        """One row per track: length, step sums (drift removed), masses, D and diameter, and whether it is used.

        ``diffusion_um2_s`` is the covariance-based estimate (CVE, exoacq.nta.steps;
        NaN below 3 points), ``diameter_nm`` the per-track Stokes-Einstein diameter of
        the blur-corrected MSD (a diagnostic: distributions come from the deconvolution).
        """
        t, p = self._tracks, self.params
        pids = np.flatnonzero(t.n_points[: t.size] > 0)
        n_points, n_steps, n_pairs = t.n_points[pids], t.n_steps[pids].astype(float), t.n_pairs[pids]
        if p.drift_correction:
            v = self._drift.track_velocity_um(t.first_frame[pids], t.last_frame[pids], n_steps)
        else:
            v = np.zeros((len(pids), 2))
        sum_sq, sum_cross = self._drift.corrected_sums(v, t, pids)
        rejected = rejection(t, pids, n_steps, p.pixel_size_um, p.minmass)
        used = (n_points >= self.min_track_length()) & (n_steps >= 2) & (sum_sq > 0) & (rejected == "")
        cve = (steps.cve_diffusion_um2_s(n_steps, np.maximum(sum_sq, 0.0), sum_cross, n_pairs, p.frame_interval_s)
               if len(pids) else np.empty(0))
        mean_mass = t.sum_mass[pids] / np.maximum(n_points, 1)
        d_msd = diffusion_um2_s(n_steps, sum_sq, p)
        return pd.DataFrame({
            "particle": pids,
            "first_frame": t.first_frame[pids],
            "length_frames": n_points,
            "n_steps": n_steps.astype(int),
            "n_pairs": n_pairs,
            "sum_sq_um2": sum_sq,
            "sum_cross_um2": sum_cross,
            "mean_mass": mean_mass,
            "max_mass": t.max_mass[pids],
            # the brightest feature that is not clipped (0: every feature of the track is saturated)
            "max_mass_unsaturated": t.max_mass_unsaturated[pids],
            "saturated_fraction": t.n_saturated[pids] / np.maximum(n_points, 1),
            "rejected": rejected,
            "diffusion_um2_s": cve,
            "diameter_nm": np.where(used, diameters_nm(n_steps, d_msd, p), np.nan),
            "used": used,
        })

    def step_correlation(self, particles: np.ndarray) -> steps.StepCorrelation:
        """The step covariances of these tracks beyond lag 1 and the D they add to each track's CVE
        (exoacq.nta.steps.step_correlation_correction_um2_s), from their linked positions, drift removed."""
        rows = np.concatenate(self._rows) if self._rows else np.empty((0, 5))
        rows = rows[np.isin(rows[:, 1], np.asarray(particles, float))]
        rows = rows[np.lexsort((rows[:, 0], rows[:, 1]))]  # by particle, then frame
        step = np.flatnonzero((rows[1:, 1] == rows[:-1, 1]) & (rows[1:, 0] == rows[:-1, 0] + 1))
        p = self.params
        frame = rows[step, 0].astype(np.int64)
        drift = np.zeros((len(step), 2))
        if p.drift_correction and len(step):
            drift = self._drift.cumulative_um[frame + 1] - self._drift.cumulative_um[frame]
        dx = (rows[step + 1, 2] - rows[step, 2]) * p.pixel_size_um - drift[:, 0]
        dy = (rows[step + 1, 3] - rows[step, 3]) * p.pixel_size_um - drift[:, 1]
        return steps.step_correlation_correction_um2_s(rows[step, 1], dx, dy, p.frame_interval_s)

    def positions_since(self, linked_frames: int) -> tuple[np.ndarray, int]:
        """Rows (frame, particle, x_px, y_px, mass) of the frames linked after the first ``linked_frames``
        ones, and how many frames are linked now (pass it next time). Linked rows are final: a later frame
        never changes them, so they can be written out as the run goes (run.h5, exoacq.durable)."""
        rows = self._rows[linked_frames:]
        return (np.concatenate(rows) if rows else np.empty((0, 5))), len(self._rows)

    def tails(self, frame_number: int, points: int = TAIL_POINTS) -> list[list[float]]:
        """The live tracks' tails for viewers: each track that has a feature at the threshold in frame
        ``frame_number`` (the newest linked one) and at least 2 points, its last <= ``points`` positions,
        oldest first, as [x0, y0, x1, y1, ...] (px, 2 decimals). While the pilot holds the frames: the
        provisional tracks'.
        Reads only the last ``points`` frames' rows (no per-track history is kept for it)."""
        if self._provisional is not None:
            return self._provisional.tails(frame_number, points)
        recent = self._rows[-points:]
        if not recent or recent[-1].shape[0] == 0 or recent[-1][0, 0] != frame_number:
            return []
        rows = np.concatenate(recent)
        # the tracks whose feature in this frame reaches the threshold (the features viewers are shown)
        last = recent[-1]
        shown = last[at_threshold(last[:, 4], self.params.minmass), 1]
        # a track is continuous (no memory): its rows in these frames are its last positions
        rows = rows[(rows[:, 0] > frame_number - points) & np.isin(rows[:, 1], shown)]
        rows = rows[np.lexsort((rows[:, 0], rows[:, 1]))]  # by particle, then frame
        starts = np.flatnonzero(np.r_[True, rows[1:, 1] != rows[:-1, 1]])
        xy = np.round(rows[:, 2:4], 2)
        return [xy[a:b].ravel().tolist() for a, b in zip(starts, np.r_[starts[1:], len(rows)]) if b - a >= 2]

    def positions_table(self) -> pd.DataFrame:
        """Every linked feature: frame, particle, x_px, y_px, mass (frames held for the pilot are linked first)."""
        self.finish()
        data = np.concatenate(self._rows) if self._rows else np.empty((0, 5))
        table = pd.DataFrame(data, columns=["frame", "particle", "x_px", "y_px", "mass"])
        return table.astype({"frame": np.int64, "particle": np.int64})

    def summary(self, histogram: bool = True, running: bool = False) -> dict[str, Any]:
        """Size statistics, concentration and counts from what has been seen so far.

        Final: the deconvolved, detection-corrected distribution (exoacq.nta.distribution).
        ``running``: the cheap form for progress reports: statistics of the per-track
        diameters of tracks of >= 10 points (or ``min_track_length``) and their counts in
        :func:`exoacq.nta.track_numbers.running_histogram`'s bins (no deconvolution); while the
        pilot is still choosing the search range, those of its provisional tracks (linked at the
        largest range), marked ``provisional``.
        """
        if not running:
            self.finish()
        elif self._provisional is not None:  # the pilot is choosing the range: its provisional tracks meanwhile
            provisional = self._provisional.summary(histogram=histogram, running=True)
            return provisional | {"link_search_range_px": None, "provisional": True}
        table = self.tracks_table()
        p = self.params
        frames = len(self.features_per_frame)
        ppf = float(np.mean(self.features_per_frame)) if frames else 0.0
        warnings: list[str] = []
        if running:
            used = table.loc[table["used"].to_numpy(bool)]
            sizes, size_detected = size_statistics(used["diameter_nm"].to_numpy(float), fast_mode=True), None
            volume_ratio, min_track_length, localisation_nm, distribution = 1.0, p.min_track_length, None, None
        else:
            distribution = size_distribution(
                table, frame_interval_s=p.frame_interval_s,
                exposure_s=None if p.exposure_ms is None else p.exposure_ms * 1e-3,
                temperature_c=p.temperature_c, viscosity_mpa_s=p.viscosity_mpa_s, minmass=p.minmass,
                min_track_length=p.min_track_length, scattering_exponent=p.scattering_exponent,
                volume_correction=p.volume_correction, calibration_relative_depth=p.calibration_relative_depth)
            warnings += distribution["warnings"]
            min_track_length = distribution["min_track_length"]
            if p.min_track_length is None:
                self._auto_min_track_length = min_track_length
            used = distribution["used"]
            sizes = distribution["size_nm"] or dict.fromkeys(("mean", "mode", "sd", "d10", "d50", "d90"))
            size_detected, volume_ratio = distribution["size_nm_detected"], distribution["volume_ratio"]
            localisation_nm = distribution["localisation_nm"]
        crowding, occupied = p.crowding(self.features_per_frame)
        if not math.isfinite(crowding):
            warnings.append(f"features fill {occupied:.0%} of the frame within the merging distance: too crowded "
                            "to count; dilute the sample")
        elif crowding > 1.1:
            warnings.append(f"crowded: {crowding - 1:.0%} of the particles merge with a brighter neighbour "
                            "(counted back in); dilute the sample for better sizes")
        concentration = None
        if p.detection_volume_nl and math.isfinite(crowding):
            concentration = ppf * crowding / (p.detection_volume_nl * 1e-6) * p.dilution * volume_ratio
        elif not p.detection_volume_nl:
            warnings.append("no detection volume configured: concentration not reported")
        if self.linking_resets:
            warnings.append(f"linking gave up {self.linking_resets} times on crowded frames; "
                            "dilute the sample or lower search_range_px")
        diffusion = used["diffusion_um2_s"].to_numpy(float)
        diffusion = diffusion[np.isfinite(diffusion)]
        correlation = None
        if not running and diffusion.size:  # errors lasting several frames (compressed video): what the CVE misses
            correlation = self.step_correlation(used["particle"].to_numpy())
            diffusion = diffusion + correlation.diffusion_correction_um2_s
        dim = table["rejected"] == "dim"
        result = {
            "size_nm": sizes,
            "size_nm_detected": size_detected,
            "concentration_per_ml": concentration,
            "particles_per_frame": ppf,
            "crowding_correction": crowding if math.isfinite(crowding) else None,
            # below_threshold: tracks whose mean feature mass is under the threshold (noise, particles far from the
            # sheet, linked down to the noise floor: TrackingParameters.link_minmass), of any length: part of total,
            # never sized
            "tracks": {"total": int(len(table)), "used": int(len(used)), "min_length_frames": min_track_length,
                       "below_threshold": int(dim.sum())},
            "diffusion_um2_s": {"mean": float(diffusion.mean()) if diffusion.size else None,
                                "median": float(np.median(diffusion)) if diffusion.size else None},
            # step covariances beyond lag 1 (errors lasting several frames) and the D they add to every CVE
            "step_correlation": None if correlation is None else correlation.to_dict(),
            "localisation_nm": localisation_nm,
            "link_search_range_px": None if p.auto_search_range else p.search_range_px,
            "detection": None if distribution is None or "peak_mass_100nm" not in distribution else {
                "peak_mass_100nm": distribution["peak_mass_100nm"],
                "mean_relative_depth": distribution["mean_relative_depth"], "volume_ratio": volume_ratio},
            "frames_analysed": frames,
            # dim: tracks long enough to be sized whose mean feature mass is below the threshold
            "rejected_tracks": {"stationary": int((table["rejected"] == "stationary").sum()),
                                "dim": int((dim & (table["length_frames"]
                                                   >= (min_track_length or self.min_track_length()))).sum())},
            "saturated_tracks": int((table["saturated_fraction"] > 0).sum()),
            "blur": None if distribution is None else distribution.get("blur"),
            # link_minmass: features down to it join tracks (TrackingParameters.link_minmass)
            "threshold": (dict(p.threshold) if p.threshold else {"minmass": p.minmass, "rule": "fixed"})
            | {"link_minmass": p.link_minmass},
            "drift_um_s": self._drift.velocity_um_s(p.frame_rate_hz),
            "warnings": warnings,
        }
        if histogram and running:
            result["histogram"] = running_histogram(used["diameter_nm"].to_numpy(float))
        elif histogram:
            result["histogram"] = number_histogram(distribution.get("diameter_nm"),
                                                   distribution.get("probability_smoothed"), len(used), concentration)
        return result
