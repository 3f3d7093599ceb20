"""Per-track running sums of a streaming tracker, and the ensemble flow drift.

Everything the size analysis needs from a track is kept in O(1) per feature, in
arrays indexed by particle id: first and last frame, last position, points,
one-frame steps and their sums (plain, squared, products of consecutive steps
for the covariance-based D of exoacq.nta.steps), and masses. The sample's
drift is the mean step of all tracked particles, frame by frame; it is removed
from each track's sums at the end, over the track's own frames.
"""
from __future__ import annotations

import numpy as np


class TrackSums:
    """Per-track running sums in arrays indexed by particle id (ids are 0, 1, 2, ... in order)."""

    FIELDS = {"first_frame": np.int64, "last_frame": np.int64, "x_px": float, "y_px": float,
              "n_points": np.int64, "n_steps": np.int64, "sum_sq_um2": float,
              "sum_dx_um": float, "sum_dy_um": float,
              # consecutive step pairs (CVE): sum of dx_n dx_n+1 + dy_n dy_n+1, their number, end steps
              "n_pairs": np.int64, "sum_cross_um2": float, "first_dx_um": float, "first_dy_um": float,
              "last_dx_um": float, "last_dy_um": float,
              "sum_mass": float, "max_mass": float,
              # where the track sits (radius of gyration: is it moving at all?), clipped features
              "sum_x_px": float, "sum_y_px": float, "sum_r2_px2": float, "n_saturated": np.int64,
              "max_mass_unsaturated": float}

    def __init__(self, capacity: int = 1024):
        self.size = 0
        for name, dtype in self.FIELDS.items():
            setattr(self, name, np.zeros(capacity, dtype))

    def ensure(self, size: int) -> None:
        if size > len(self.n_points):
            capacity = max(size, 2 * len(self.n_points))
            for name in self.FIELDS:
                old = getattr(self, name)
                grown = np.zeros(capacity, old.dtype)
                grown[: len(old)] = old
                setattr(self, name, grown)
        self.size = max(self.size, size)

    def update(self, frame_number: int, ids: np.ndarray, xs: np.ndarray, ys: np.ndarray, mass: np.ndarray,
               pixel_size_um: float, saturated: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Add one frame's positions; a step counts only between consecutive frames.
        ``saturated``: which features hold a clipped pixel (their mass is a lower bound).
        Returns this frame's steps (x, y in um) of the continuing tracks."""
        self.ensure(int(ids.max()) + 1)
        new = self.n_points[ids] == 0
        step = ~new & (self.last_frame[ids] == frame_number - 1)
        moved = ids[step]
        dx = (xs[step] - self.x_px[moved]) * pixel_size_um
        dy = (ys[step] - self.y_px[moved]) * pixel_size_um
        self.sum_sq_um2[moved] += dx * dx + dy * dy
        self.sum_dx_um[moved] += dx
        self.sum_dy_um[moved] += dy
        paired = self.n_steps[moved] > 0
        pair_ids, first_ids = moved[paired], moved[~paired]
        self.sum_cross_um2[pair_ids] += dx[paired] * self.last_dx_um[pair_ids] + dy[paired] * self.last_dy_um[pair_ids]
        self.n_pairs[pair_ids] += 1
        self.first_dx_um[first_ids], self.first_dy_um[first_ids] = dx[~paired], dy[~paired]
        self.last_dx_um[moved], self.last_dy_um[moved] = dx, dy
        self.n_steps[moved] += 1
        self.first_frame[ids[new]] = frame_number
        self.sum_mass[ids] += mass
        self.max_mass[ids] = np.maximum(self.max_mass[ids], mass)
        clipped = np.zeros(len(ids), bool) if saturated is None else np.asarray(saturated, bool)
        self.n_saturated[ids[clipped]] += 1
        self.max_mass_unsaturated[ids[~clipped]] = np.maximum(self.max_mass_unsaturated[ids[~clipped]], mass[~clipped])
        self.sum_x_px[ids] += xs
        self.sum_y_px[ids] += ys
        self.sum_r2_px2[ids] += xs * xs + ys * ys
        self.n_points[ids] += 1
        self.last_frame[ids] = frame_number
        self.x_px[ids], self.y_px[ids] = xs, ys
        return dx, dy


class EnsembleDrift:
    """The sample's drift (flow), from the mean one-frame step of all tracked particles.

    A track's steps are corrected by the mean drift over its own frames,
    sum (d - v)^2 = sum d^2 - 2 v . sum d + n v^2. Averaging over all particles
    and over the track's frames keeps the estimate's own noise, and the share
    of the particle itself in it (bias ~ 2 / (N n) for N particles per frame),
    far below the sizes' statistical error, for monodisperse and mixed samples
    alike (unlike per-frame subtraction: Hartman & Kirby 2017).
    """

    #: Fewer continuing tracks than this in a frame: that frame's drift is the previous one's.
    MIN_STEPS = 5

    def __init__(self, capacity: int = 4096):
        self.cumulative_um = np.zeros((capacity, 2))  # drift summed up to each frame (frame 0 -> 0)
        self.last_frame: int | None = None
        self.last_step_um = np.zeros(2)
        self.frames_with_steps = 0

    def add(self, frame_number: int, dx: np.ndarray, dy: np.ndarray) -> None:
        if frame_number >= len(self.cumulative_um):
            grown = np.zeros((max(frame_number + 1, 2 * len(self.cumulative_um)), 2))
            grown[: len(self.cumulative_um)] = self.cumulative_um
            self.cumulative_um = grown
        previous = self.cumulative_um[self.last_frame] if self.last_frame is not None else np.zeros(2)
        if self.last_frame is not None and frame_number > self.last_frame + 1:  # frames missing: hold the drift
            gap = np.arange(self.last_frame + 1, frame_number)
            self.cumulative_um[gap] = previous + np.outer(gap - self.last_frame, self.last_step_um)
            previous = self.cumulative_um[frame_number - 1]
        if dx.size >= self.MIN_STEPS:
            self.last_step_um = np.array([dx.mean(), dy.mean()])
            self.frames_with_steps += 1
        self.cumulative_um[frame_number] = previous + (self.last_step_um if self.last_frame is not None else 0.0)
        self.last_frame = frame_number

    def track_velocity_um(self, first, last, n_steps) -> np.ndarray:
        """Mean drift per frame over each track's own frames, (tracks, 2) in um."""
        span = self.cumulative_um[last] - self.cumulative_um[first]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(n_steps[:, None] > 0, span / n_steps[:, None], 0.0)

    @staticmethod
    def corrected_sums(v, t, pids) -> tuple[np.ndarray, np.ndarray]:
        """Sums of squares and of consecutive products of the steps d - v of tracks ``pids`` in ``t``.

        sum (d - v)^2 = sum d^2 - 2 v . sum d + n v^2; over the n - 1 pairs,
        sum (d_k - v)(d_k+1 - v) = sum d_k d_k+1 - v . (2 sum d - d_first - d_last) + (n - 1) v^2.
        """
        sum_d = np.column_stack([t.sum_dx_um[pids], t.sum_dy_um[pids]])
        ends = np.column_stack([t.first_dx_um[pids] + t.last_dx_um[pids], t.first_dy_um[pids] + t.last_dy_um[pids]])
        v2 = (v ** 2).sum(axis=1)
        sum_sq = t.sum_sq_um2[pids] - 2.0 * (v * sum_d).sum(axis=1) + t.n_steps[pids] * v2
        pairs = t.n_pairs[pids]
        sum_cross = np.where(pairs > 0, t.sum_cross_um2[pids] - (v * (2.0 * sum_d - ends)).sum(axis=1) + pairs * v2,
                             0.0)
        return sum_sq, sum_cross

    def velocity_um_s(self, frame_rate_hz: float) -> tuple[float, float] | None:
        if self.last_frame is None or self.last_frame == 0:
            return None
        vx, vy = self.cumulative_um[self.last_frame] / self.last_frame * frame_rate_hz
        return float(vx), float(vy)
