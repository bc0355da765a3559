"""PNG plots (matplotlib, Agg backend) of simulation results (CCT by policy, FCT CDFs, link heatmaps)
and of measured-vs-simulated comparisons from ``netsim fit-transport``."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from netsim.results import SimulationResult
from netsim.topology import LeafSpine
from netsim.transport_fit import FitResult


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


def _policy_label(comparison) -> str:
    row = comparison.scenario.row
    return f"{row.policy or '-'} (k={'min' if row.splits is None else row.splits})"


def plot_measured_vs_simulated(result: FitResult, path: str | Path) -> Path:
    """Scatter of simulated against measured p50 CCT for every row, default and fitted model side by
    side, with the +-10% and +-20% bands; one marker per policy, filled where the row was fitted."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), sharex=True, sharey=True)
    labels = sorted({_policy_label(c) for c in result.rows})
    markers = dict(zip(labels, "osD^v<>ph*"))
    measured = np.array([c.measured_s for c in result.rows]) * 1e3
    lo, hi = measured.min() / 1.5, measured.max() * 1.5
    line = np.array([lo, hi])
    for ax, attr, title in ((axes[0], "default_s", "default model (tcp)"), (axes[1], "fitted_s", "fitted model")):
        for band, style in ((0.1, ":"), (0.2, "--")):
            ax.plot(line, line * (1 + band), color="grey", linestyle=style, linewidth=0.8)
            ax.plot(line, line * (1 - band), color="grey", linestyle=style, linewidth=0.8,
                    label=f"+-{band:.0%}")
        ax.plot(line, line, color="black", linewidth=0.8)
        for label in labels:
            rows = [c for c in result.rows if _policy_label(c) == label]
            for fitted in (True, False):
                pick = [c for c in rows if c.used_in_fit == fitted]
                if pick:
                    ax.scatter([c.measured_s * 1e3 for c in pick], [getattr(c, attr) * 1e3 for c in pick],
                               marker=markers[label], s=22, facecolors=None if fitted else "none",
                               edgecolors="C" + str(labels.index(label)), color="C" + str(labels.index(label)),
                               label=label + ("" if fitted else ", hashed (not fitted)"))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("measured CCT, p50 (ms)")
        ax.set_title(title)
    axes[0].set_ylabel("simulated CCT (ms)")
    handles, names = axes[1].get_legend_handles_labels()
    unique = dict(zip(names, handles))
    axes[1].legend(unique.values(), unique.keys(), fontsize=7, loc="upper left")
    return _save(fig, path)


def plot_measured_busbw(result: FitResult, path: str | Path) -> Path:
    """Measured busbw (nccl-tests definition) against message size: one panel per collective, colour
    by policy, line style by rank placement; repeated rows (ECMP seeds) are shown as their median."""
    from netsim.busbw import busbw

    collectives = sorted({c.scenario.row.collective for c in result.rows})
    policies = sorted({_policy_label(c) for c in result.rows})
    placements = sorted({tuple(c.scenario.row.fabric.rank_hosts) if c.scenario.row.fabric else () for c in result.rows})
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, len(collectives), figsize=(5.5 * len(collectives), 4.5), squeeze=False)
    for ax, collective in zip(axes[0], collectives):
        series: dict[tuple[str, tuple[int, ...]], dict[int, list[float]]] = {}
        for c in result.rows:
            row = c.scenario.row
            if row.collective == collective:
                hosts = tuple(row.fabric.rank_hosts) if row.fabric else ()
                series.setdefault((_policy_label(c), hosts), {}).setdefault(row.size_bytes, []).append(
                    busbw(collective, row.size_bytes, c.measured_s, row.ranks) / 1e6)
        for (policy, hosts), by_size in sorted(series.items()):
            sizes = sorted(by_size)
            ax.plot(sizes, [float(np.median(by_size[s])) for s in sizes], marker=".", linewidth=1,
                    color=f"C{policies.index(policy)}", linestyle=styles[placements.index(hosts) % len(styles)],
                    label=f"{policy} @ hosts {','.join(map(str, hosts))}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("size per rank (bytes)")
        ax.set_ylabel("busbw (MB/s), median over repeats")
        ax.set_title(f"{collective}: measured")
        ax.legend(fontsize=5)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
