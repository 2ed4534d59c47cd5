"""Loss-curve figure of a training run (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

_SKIP = {"step", "split", "time", "lr", "s_per_step"}


def plot_loss_curves(records: Iterable[Mapping], path: str | Path, title: str = "") -> Path:
    """Plot every loss term of the ``train`` records (one panel per term, log scale),
    with the ``val`` records overlaid, to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    records = list(records)
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    terms = [k for k in (train[0] if train else (val[0] if val else {})) if k not in _SKIP]
    n = max(1, len(terms))
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, term in zip(axes.flat, terms):
        for recs, style, label in ((train, "-", "train"), (val, "o-", "validation")):
            pts = [(r["step"], r[term]) for r in recs if term in r and np.isfinite(r[term])]
            if pts:
                s, v = zip(*pts)
                ax.plot(s, v, style, label=label, markersize=3)
        ax.set_title(term)
        ax.set_xlabel("step")
        if all(r.get(term, 1) > 0 for r in train + val):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(terms):]:
        ax.axis("off")
    if terms:
        axes.flat[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
