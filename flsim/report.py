"""PNG figures of one or more ``flsim run`` output directories.

* ``phases.png`` - per round, stacked mean phase seconds over clients (polling hatched);
* ``timeline.png`` - per client, a bar per phase on the round's time axis (first directory, last round);
* ``stragglers.png`` - per round and client, time from the first reply to this client's reply, split
  into the phases where this client was slower than the fastest one;
* ``whatif.png`` - one stacked bar per directory (profile): mean round time by phase;
* ``report.html`` - one self-contained page: the four figures inline and their numbers as tables
  (mean phase seconds per round, straggler per round, the what-if means per profile).
"""

from __future__ import annotations

import base64
import html
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from flsim.errors import RecordError
from flsim.phases import PHASES, POLLING_PHASES, PhaseRecord
from flsim.results import read_phases

COLOURS = dict(zip(PHASES, plt.get_cmap("tab20").colors))


def _mean_by_round(records: list[PhaseRecord]) -> dict[int, dict[str, float]]:
    per: dict[int, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(float)))
    for r in records:
        per[r.round][r.client][r.phase] += r.seconds
    return {rnd: {p: sum(c[p] for c in clients.values()) / len(clients) for p in PHASES}
            for rnd, clients in sorted(per.items())}


def _stack(ax: plt.Axes, xs: list[str], rows: list[dict[str, float]]) -> None:
    bottom = [0.0] * len(xs)
    for p in PHASES:
        vals = [row[p] for row in rows]
        if not any(vals):
            continue
        ax.bar(xs, vals, bottom=bottom, label=p, color=COLOURS[p], hatch="//" if p in POLLING_PHASES else None)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("seconds")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _label(run_dir: Path) -> str:
    summary = run_dir / "summary.json"
    if summary.exists():
        prof = json.loads(summary.read_text()).get("profile") or {}
        return str(prof.get("name", run_dir.name)) if isinstance(prof, dict) else run_dir.name
    return run_dir.name


def render(run_dirs: list[Path], out: Path) -> list[Path]:
    """Render the figures and ``report.html`` for ``run_dirs`` into ``out``; returns the files written."""
    if not run_dirs:
        raise RecordError("flsim report needs at least one run directory")
    out.mkdir(parents=True, exist_ok=True)
    runs = [(_label(d), read_phases(d)) for d in run_dirs]
    written = []

    name, recs = runs[0]
    means = _mean_by_round(recs)
    fig, ax = plt.subplots(figsize=(8, 4))
    _stack(ax, [f"round {r}" for r in means], list(means.values()))
    ax.set_title(f"{name}: mean phase time per round (hatched = Flower polling)")
    fig.tight_layout()
    fig.savefig(out / "phases.png", dpi=120)
    written.append(out / "phases.png")
    plt.close(fig)

    last = max(r.round for r in recs)
    rows = [r for r in recs if r.round == last]
    t0 = min(r.start for r in rows)
    clients = sorted({r.client for r in rows})
    fig, ax = plt.subplots(figsize=(9, 1 + 0.6 * len(clients)))
    seen = set()
    for y, c in enumerate(clients):
        for r in rows:
            if r.client == c and r.seconds > 0:
                ax.barh(y, r.seconds, left=r.start - t0, color=COLOURS[r.phase],
                        label=None if r.phase in seen else r.phase)
                seen.add(r.phase)
    ax.set_yticks(range(len(clients)), clients)
    ax.set_xlabel(f"seconds since the start of round {last}")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"{name}: timeline of round {last}")
    fig.tight_layout()
    fig.savefig(out / "timeline.png", dpi=120)
    written.append(out / "timeline.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    labels, attr = [], []
    for rnd in sorted({r.round for r in recs}):
        per_client = defaultdict(lambda: defaultdict(float))
        for r in recs:
            if r.round == rnd and r.stage == "train" and r.phase != "straggler_wait":
                per_client[r.client][r.phase] += r.seconds
        fastest = {p: min(pc[p] for pc in per_client.values()) for p in PHASES}
        for c, pc in sorted(per_client.items()):
            labels.append(f"r{rnd} {c}")
            attr.append({p: max(0.0, pc[p] - fastest[p]) for p in PHASES})
    _stack(ax, labels, attr)
    ax.set_title(f"{name}: straggler attribution (train stage; excess over the fastest client per phase)")
    ax.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    fig.savefig(out / "stragglers.png", dpi=120)
    written.append(out / "stragglers.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    avg = []
    for _, rr in runs:
        m = _mean_by_round(rr)
        avg.append({p: sum(v[p] for v in m.values()) / len(m) for p in PHASES})
    _stack(ax, [n for n, _ in runs], avg)
    ax.set_title("what-if: mean round time by phase, per profile")
    fig.tight_layout()
    fig.savefig(out / "whatif.png", dpi=120)
    written.append(out / "whatif.png")
    plt.close(fig)

    stragglers = {label: sum(v.values()) for label, v in zip(labels, attr, strict=True)}
    page = _html(name, means, stragglers, dict(zip([n for n, _ in runs], avg, strict=True)), written)
    (out / "report.html").write_text(page)
    written.append(out / "report.html")
    return written


def _table(title: str, rows: dict[str, dict[str, float]]) -> str:
    """Phases as columns (those that are ever non-zero), one row per key, and a total."""
    shown = [p for p in PHASES if any(r.get(p, 0.0) for r in rows.values())]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["", *shown, "total"])
    body = "".join(
        f"<tr><th>{html.escape(k)}</th>" + "".join(f"<td>{r.get(c, 0.0):.3f}</td>" for c in shown)
        + f"<td><b>{sum(r.values()):.3f}</b></td></tr>" for k, r in rows.items())
    return f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body}</table>"


def _html(name: str, means: dict[int, dict[str, float]], stragglers: dict[str, float],
          whatif: dict[str, dict[str, float]], figures: list[Path]) -> str:
    imgs = "".join(f'<figure><img alt="{html.escape(f.stem)}" src="data:image/png;base64,'
                   f'{base64.b64encode(f.read_bytes()).decode()}"></figure>' for f in figures)
    excess = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.3f}</td></tr>" for k, v in stragglers.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>flsim report: {html.escape(name)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%}</style></head><body>"
            f"<h1>flsim report: {html.escape(name)}</h1><p>Seconds; means over clients.</p>"
            + _table(f"{name}: mean phase seconds per round", {f"round {r}": m for r, m in means.items()})
            + "<h2>straggler attribution (train stage): seconds in excess of the fastest client</h2>"
            + f"<table><tr><th></th><th>excess</th></tr>{excess}</table>"
            + _table("what-if: mean round seconds by phase, per profile", whatif)
            + imgs + "</body></html>")
