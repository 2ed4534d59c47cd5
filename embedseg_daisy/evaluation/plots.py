"""Merge-split plot (paper Fig. S15): VI merge (y) against VI split (x).

Rendered with matplotlib's object-oriented API on an Agg canvas: no pyplot, no
global backend switch, safe in headless workers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

__all__ = ["merge_split_plot"]

Curve = Sequence[tuple[float, float, float]]  # (threshold, vi_split, vi_merge)


def merge_split_plot(
    curves: Mapping[str, Curve],
    path: str | os.PathLike,
    log_base_label: str = "nats",
    *,
    operating_points: Mapping[str, tuple[float, float]] | None = None,
    annotate_thresholds: bool = False,
    title: str | None = None,
) -> str:
    """Write a merge-split plot to ``path`` (PNG) and return the path.

    ``curves[method]`` is a list of ``(threshold, vi_split, vi_merge)``; each method
    is one line with a marker per threshold, points ordered by threshold.  A curve
    with one point is drawn as a single marker.  ``operating_points[method] =
    (vi_split, vi_merge)`` adds a filled circle (the chosen threshold, as in Fig.
    S15).  ``log_base_label`` names the VI unit on the axes ("nats" or "bits").
    Better segmentations lie towards the origin (bottom left).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 5.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xmax = ymax = 0.0
    colors = {}
    for method, points in curves.items():
        pts = sorted((float(t), float(s), float(m)) for t, s, m in points)
        if not pts:
            continue
        xs = [p[1] for p in pts]
        ys = [p[2] for p in pts]
        (line,) = ax.plot(xs, ys, marker="o", markersize=3.5, linewidth=1.3, label=str(method))
        colors[method] = line.get_color()
        if annotate_thresholds:
            for t, x, y in pts:
                ax.annotate(f"{t:g}", (x, y), fontsize=6, textcoords="offset points", xytext=(3, 3))
        xmax = max(xmax, max(xs))
        ymax = max(ymax, max(ys))
    for method, (x, y) in (operating_points or {}).items():
        ax.plot([x], [y], marker="o", markersize=7, color=colors.get(method, "k"), linestyle="none")
        xmax = max(xmax, float(x))
        ymax = max(ymax, float(y))
    ax.set_xlabel(f"VI split ({log_base_label})")
    ax.set_ylabel(f"VI merge ({log_base_label})")
    ax.set_xlim(0.0, xmax * 1.05 if xmax > 0 else 1.0)
    ax.set_ylim(0.0, ymax * 1.05 if ymax > 0 else 1.0)
    ax.grid(True, linewidth=0.4, alpha=0.5)
    if title:
        ax.set_title(title)
    if curves:
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path, format="png")
    return path
