"""Every figure of the experiments: 2-D samples over data, trajectories, and a grid of sample panels."""

from __future__ import annotations

import os

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def axes_grid(nrows: int, ncols: int, panel: tuple[float, float] = (3.0, 3.0)):
    """(figure, axes (nrows, ncols)) of a grid of panels of size `panel` (inches), for a script's own figure."""
    return _pyplot().subplots(nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows), squeeze=False)


def save(fig, filename: str, dpi: int = 100, top: float = 1.0) -> None:
    """Lay out (below `top`, a fraction of the height: room for a suptitle), write and close `fig`."""
    os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(filename, dpi=dpi)
    _pyplot().close(fig)


def samples(samples, reference, filename: str, title: str = "") -> None:
    """Samples (n, 2) over reference data (m, 2)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(reference[:, 0], reference[:, 1], s=2, alpha=0.3, c="grey", label="data")
    ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.5, c="C0", label="samples")
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", markerscale=4)
    save(fig, filename)


def trajectories(traj, filename: str, title: str = "", count: int = 40) -> None:
    """The first `count` trajectories of traj (T, n, 2)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    for i in range(min(count, traj.shape[1])):
        ax.plot(traj[:, i, 0], traj[:, i, 1], lw=0.6, alpha=0.7)
    ax.scatter(traj[-1, :count, 0], traj[-1, :count, 1], s=6, c="k")
    ax.set_title(title)
    ax.set_aspect("equal")
    save(fig, filename)


def panel_grid(panels: dict, rows: list, cols: list, filename: str, *, lim: float | None = 4.0,
               size: float = 2.6, point_size: float = 0.5, col_titles: dict | None = None, marks=None,
               title: str = "") -> None:
    """A rows × cols grid of 2-D scatter panels; `panels[(row, col)]` is (n, 2) or None (left empty); `marks`
    (m, 2) are drawn as red crosses on every panel (e.g. the modes of the data)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(size * len(cols), size * len(rows)), squeeze=False)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            ax = axes[i, j]
            x = panels.get((r, c))
            if x is not None:
                x = np.asarray(x)
                x = x[np.isfinite(x).all(-1)]
                ax.scatter(x[:, 0], x[:, 1], s=point_size, alpha=0.5)
            if marks is not None:
                ax.scatter(marks[:, 0], marks[:, 1], s=12, marker="x", c="red", linewidths=0.8)
            if lim is not None:
                ax.set_xlim(-lim, lim)
                ax.set_ylim(-lim, lim)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(str(r))
            if i == 0:
                ax.set_title(str((col_titles or {}).get(c, c)))
    if title:
        fig.suptitle(title, fontsize=10)
    save(fig, filename, dpi=90, top=1 - 0.3 / (size * len(rows)) if title else 1.0)


def trajectory_grid(trajectories: dict, filename: str, *, ncols: int = 4, lim: float | None = 4.0,
                    size: float = 2.6, title: str = "") -> None:
    """One panel per `trajectories[label]` (T, k, 2): k paths through time (start grey, end black)."""
    plt = _pyplot()
    labels = list(trajectories)
    nrows = -(-len(labels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.flat[len(labels):]:
        ax.axis("off")
    for ax, label in zip(axes.flat, labels):
        traj = np.asarray(trajectories[label])
        for i in range(traj.shape[1]):
            ax.plot(traj[:, i, 0], traj[:, i, 1], lw=0.6, alpha=0.8)
        ax.scatter(traj[0, :, 0], traj[0, :, 1], s=5, c="grey")
        ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=5, c="k")
        if lim is not None:
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(str(label), fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    save(fig, filename, dpi=90, top=1 - 0.3 / (size * nrows) if title else 1.0)


def curves(xs, series: dict, filename: str, *, xlabel: str, ylabel: str, title: str = "", logx: bool = True,
           logy: bool = False, hlines: dict | None = None, xticks: bool = False) -> None:
    """One line per `series[label]` (values at `xs`; with `xticks`, the x ticks at `xs` only), and a horizontal
    reference line per `hlines[label]` = (y, linestyle)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = plt.get_cmap("tab20").colors if len(series) > 10 else [f"C{i}" for i in range(10)]
    for i, (label, ys) in enumerate(series.items()):  # tab20 past ten lines: no two share a colour
        ax.plot(xs, ys, marker="os^"[i % 3], color=colours[i % len(colours)], label=label)
    for label, (y, style) in (hlines or {}).items():
        ax.axhline(y, color="gray", ls=style, label=label)
    if logx:
        ax.set_xscale("log")
    if xticks:
        ax.set_xticks(xs, [f"{x:g}" for x in xs], minor=False)
        ax.set_xticks([], minor=True)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=6, ncol=2)
    save(fig, filename)


def field_panels(panels: list[dict], filename: str) -> None:
    """A row of panels, each {"title", "lim", optional "grid" (m, 2) and "u" (m, 2) for a quiver of a vector
    field, optional "points" (n, 2) scattered over it}."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.0), squeeze=False)
    for ax, p in zip(axes[0], panels):
        if "u" in p:
            g, u = p["grid"], p["u"]
            ax.quiver(g[:, 0], g[:, 1], u[:, 0], u[:, 1], np.linalg.norm(u, axis=1), cmap="viridis", width=0.004)
        if "points" in p:
            ax.scatter(p["points"][:, 0], p["points"][:, 1], s=1 if "u" in p else 0.5, c="k" if "u" in p else "C0",
                       alpha=0.4 if "u" in p else 1.0)
        ax.set_title(p["title"], fontsize=9)
        ax.set_xlim(-p["lim"], p["lim"])
        ax.set_ylim(-p["lim"], p["lim"])
        ax.set_aspect("equal")
    save(fig, filename, dpi=120)
