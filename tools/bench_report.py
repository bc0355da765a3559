"""Reporting for the interleaved save/load benchmarks: medians per system, a table, ratios, JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch


def report(
    benchmark: str,
    times: dict[str, list[float]],
    systems: list[str],
    nbytes: int,
    ratios: dict[str, tuple[str, str]],
    header: str,
    out: str,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Print medians of ``times`` (keys ``<system>_save`` / ``<system>_load``) with throughput and
    the ``ratios`` (label -> (numerator key, denominator key) of median times); write all as JSON."""
    med = {k: statistics.median(v) for k, v in times.items()}
    mbps = {k: nbytes / v / 1e6 for k, v in med.items()}
    ratio_values = {label: med[a] / med[b] for label, (a, b) in ratios.items()}
    width = max(len(s) for s in systems) + 2
    print(f"\n{header}")
    print(f"{'system':<{width}}{'save s':>9}{'MB/s':>8}{'load s':>9}{'MB/s':>8}")
    for name in systems:
        print(f"{name:<{width}}{med[name + '_save']:>9.3f}{mbps[name + '_save']:>8.0f}"
              f"{med[name + '_load']:>9.3f}{mbps[name + '_load']:>8.0f}")
    for label, value in ratio_values.items():
        print(f"{label:<40}{value:6.2f}")
    result = {
        "benchmark": benchmark,
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"node": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "bytes": nbytes,
        "seconds": times,
        "median_seconds": med,
        "median_mb_per_s": mbps,
        "ratios": ratio_values,
        **extra,
    }
    write_json(out, result)
    return result


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """What ran the benchmark (the GPU's name only when ``device`` is cuda: no CUDA calls otherwise)."""
    info: dict[str, Any] = {"node": platform.node(), "arch": platform.machine(), "cpus": os.cpu_count(),
                            "python": platform.python_version(), "torch": torch.__version__}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["gpus"] = torch.cuda.device_count()
    return info


def write_json(out: str | Path, result: dict[str, Any]) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out}")


def render_table(headers: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    """Rows of strings as an aligned text table (first column left, the others right) or markdown."""
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def fmt(r: list[str]) -> str:
        return "  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w) for i, (x, w) in enumerate(zip(r, widths)))

    return "\n".join([fmt(headers), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])
