"""PNG plots of simulation results (matplotlib, Agg backend): CCT by policy, FCT CDFs, link heatmaps."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from netsim.results import SimulationResult
from netsim.topology import LeafSpine


def plot_cct_by_policy(results: dict[str, SimulationResult], path: str | Path) -> Path:
    """Bar chart of CCT per policy, with the ideal lower bound as a dashed line."""
    names = list(results)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(names, [results[n].cct_seconds * 1e3 for n in names], color="tab:blue")
    ideal = max(r.ideal_cct_seconds for r in results.values()) * 1e3
    ax.axhline(ideal, color="black", linestyle="--", label=f"ideal lower bound ({ideal:.3g} ms)")
    ax.set_ylabel("collective completion time (ms)")
    ax.set_title("CCT by path policy")
    ax.legend()
    return _save(fig, path)


def plot_fct_cdf(results: dict[str, SimulationResult], path: str | Path) -> Path:
    """Empirical CDF of per-flow completion times (from each step's start), one line per policy."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, result in results.items():
        groups, counts = result.fct_groups()
        values = np.concatenate(groups) * 1e3
        weights = np.concatenate([np.full(g.size, c, dtype=np.float64) for g, c in zip(groups, counts)])
        order = np.argsort(values, kind="stable")
        cdf = np.cumsum(weights[order]) / weights.sum()
        ax.step(values[order], cdf, where="post", label=name)
    ax.set_xlabel("flow completion time (ms)")
    ax.set_ylabel("fraction of flows")
    ax.set_title("FCT CDF")
    ax.legend()
    return _save(fig, path)


def plot_link_utilisation(result: SimulationResult, topology: LeafSpine, path: str | Path) -> Path:
    """Heatmaps of leaf->spine and spine->leaf utilisation (rows: plane-major leaves, columns: spines)."""
    grid = np.meshgrid(np.arange(topology.planes), np.arange(topology.leaves), np.arange(topology.spines),
                       indexing="ij")
    util = result.link_utilisation
    up = util[topology.leaf_up(*grid)].reshape(-1, topology.spines)
    down = util[topology.spine_down(grid[0], grid[2], grid[1])].reshape(-1, topology.spines)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, data, title in ((axes[0], up, "leaf -> spine"), (axes[1], down, "spine -> leaf")):
        image = ax.imshow(data, vmin=0.0, vmax=1.0, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_xlabel("spine")
        ax.set_ylabel("leaf" if topology.planes == 1 else "plane x leaf")
        ax.set_title(f"{title} utilisation ({result.policy})")
        fig.colorbar(image, ax=ax)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
