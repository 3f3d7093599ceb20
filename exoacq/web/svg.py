"""Small inline SVG plots for the printable sample report (no scripts, no library, a few kB each).

A bar chart (NTA size distribution, flow size histogram) and a line on a log
axis (DLS intensity distribution). Axes carry their units; the numbers are the
documents' own, only scaled to the drawing.
"""
from __future__ import annotations

import math
from html import escape
from typing import Sequence

WIDTH, HEIGHT = 420, 200
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 22, 38


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering lo..hi (1, 2, 5 x 10^k steps)."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / max(1, n - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e5 else f"{value:.0e}"


def _frame(title: str, x_label: str, y_label: str, body: list[str], x_ticks: list[tuple[float, str]],
           y_ticks: list[tuple[float, str]]) -> str:
    """The SVG: plot area, axes, ticks, labels, and the body's shapes (already in pixel coordinates)."""
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    parts = [f'<svg class="plot" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
             f'<text x="{LEFT}" y="14" class="plot-title">{escape(title)}</text>', *body,
             f'<path d="M{LEFT},{TOP} V{bottom} H{right}" class="axis"/>']
    for x, text in x_ticks:
        parts.append(f'<path d="M{x:.1f},{bottom} v4" class="axis"/>'
                     f'<text x="{x:.1f}" y="{bottom + 15}" text-anchor="middle">{escape(text)}</text>')
    for y, text in y_ticks:
        parts.append(f'<path d="M{LEFT},{y:.1f} h-4" class="axis"/>'
                     f'<text x="{LEFT - 6}" y="{y + 3:.1f}" text-anchor="end">{escape(text)}</text>')
    parts.append(f'<text x="{(LEFT + right) / 2:.0f}" y="{HEIGHT - 4}" text-anchor="middle">{escape(x_label)}</text>')
    parts.append(f'<text x="12" y="{(TOP + bottom) / 2:.0f}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {(TOP + bottom) / 2:.0f})">{escape(y_label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bars(edges: Sequence[float], heights: Sequence[float], *, title: str, x_label: str, y_label: str) -> str:
    """A histogram: bar i spans edges[i]..edges[i+1] with height heights[i] (len(edges) == len(heights) + 1)."""
    if len(edges) != len(heights) + 1 or not heights:
        return ""
    x0, x1 = float(edges[0]), float(edges[-1])
    top = max(heights)
    if not x1 > x0 or not top > 0:
        return ""
    y_ticks_values = [t for t in _ticks(0.0, top) if t <= top * 1.0001]
    y_max = top * 1.05
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return HEIGHT - BOTTOM - y / y_max * plot_h
    body = [f'<rect x="{px(a):.1f}" y="{py(h):.1f}" width="{max(0.5, px(b) - px(a)):.1f}" '
            f'height="{HEIGHT - BOTTOM - py(h):.1f}" class="bar"/>'
            for a, b, h in zip(edges[:-1], edges[1:], heights) if h > 0]
    return _frame(title, x_label, y_label, body, [(px(t), _label(t)) for t in _ticks(x0, x1)],
                  [(py(t), _label(t)) for t in y_ticks_values])


def log_line(x: Sequence[float], y: Sequence[float | None], *, title: str, x_label: str, y_label: str) -> str:
    """A line over a logarithmic x axis (a DLS size distribution over diameters); None values break it."""
    points = [(float(a), float(b)) for a, b in zip(x, y) if b is not None and a is not None and a > 0]
    if len(points) < 2:
        return ""
    lo, hi = math.log10(points[0][0]), math.log10(points[-1][0])
    top = max(b for _, b in points)
    if not hi > lo or not top > 0:
        return ""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    y_max = top * 1.05

    def px(v: float) -> float:
        return LEFT + (math.log10(v) - lo) / (hi - lo) * plot_w

    def py(v: float) -> float:
        return HEIGHT - BOTTOM - max(0.0, v) / y_max * plot_h
    path = " ".join(f"{'M' if i == 0 else 'L'}{px(a):.1f},{py(b):.1f}" for i, (a, b) in enumerate(points))
    decades = [10 ** k * m for k in range(math.floor(lo), math.ceil(hi) + 1) for m in (1, 2, 5)]
    x_ticks = [(px(t), _label(t)) for t in decades if lo <= math.log10(t) <= hi]
    return _frame(title, x_label, y_label, [f'<path d="{path}" class="line"/>'], x_ticks,
                  [(py(t), _label(t)) for t in _ticks(0.0, top) if t <= top * 1.0001])
