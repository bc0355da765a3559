"""A virtual environment of its own for ByteDance's ByteCheckpoint 0.0.2 (PyPI ``bytecheckpoint``).

Its import name is ours too, so it never shares an interpreter with this repo. The recipe is the
one checked in docs (facts): torch==2.13.0 and numpy first, then the package and its pins with
--no-deps (its declared dependencies pull a CUDA torch and old pins that do not resolve).

    python tools/bench_peers/bytecheckpoint_env.py [--venv .bench-venvs/bytecheckpoint] [--wheels DIR]

With ``--wheels DIR`` (a machine without a registry, e.g. the GPU machine with wheels carried under
shared/) the venv reuses the interpreter's own torch (--system-site-packages) and installs the
pinned packages from DIR only (--no-index).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO / ".bench-venvs" / "bytecheckpoint"
BASE = ["torch==2.13.0", "numpy"]
PINNED = [
    "bytecheckpoint==0.0.2",
    "mmh3>=4.1.0,<=4.2.0",
    "universal-pathlib>=0.2.2,<=1.0.0",
    "pathlib-abc",
    "cachetools>=5.4.0,<=10.0.0",
    "safetensors>=0.4.5,<=1.0.0",
    "grpcio==1.69.0",
    "protobuf==3.20.3",
]
STAMP = ".bench-ready"
# The check run inside the venv: ByteDance's package, not ours, and its version.
CHECK = (
    "import importlib.metadata as m, bytecheckpoint, torch; "
    "print(m.version('bytecheckpoint'), torch.__version__, bytecheckpoint.__file__)"
)


def clean_env() -> dict[str, str]:
    """The environment for the venv's python: no PYTHONPATH (our repo's bytecheckpoint must not
    shadow the peer's), weights-only loading off (its load unpickles its own metadata)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    return env


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def check(venv: Path) -> str:
    """'<version> <torch> <file>' of the peer as the venv's python sees it (run outside the repo)."""
    out = subprocess.run([str(venv_python(venv)), "-c", CHECK], cwd="/", env=clean_env(),
                         capture_output=True, text=True, timeout=300, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the venv's python cannot import bytecheckpoint: {out.stderr.strip()[-2000:]}")
    version, torch_version, path = out.stdout.strip().splitlines()[-1].split()  # its import logs to stdout
    if version != "0.0.2" or Path(path).resolve().parent == REPO / "bytecheckpoint":
        raise RuntimeError(f"wrong bytecheckpoint in the venv: {version} at {path}")
    return f"bytecheckpoint {version}, torch {torch_version}"


def ensure(venv: Path = DEFAULT_VENV, wheels: str | None = None, log=print) -> Path:
    """The venv's python, creating the venv first when needed. Raises RuntimeError saying why not."""
    venv = Path(venv)
    if venv_python(venv).exists():
        try:
            info = check(venv)
        except RuntimeError:
            if (venv / STAMP).exists():
                raise
        else:  # built before (perhaps by hand): usable as it is
            (venv / STAMP).write_text(info + "\n")
            log(f"peer venv {venv}: {info}")
            return venv_python(venv)
    base = getattr(sys, "_base_executable", sys.executable)
    if wheels:
        # no registry: reuse the interpreter's torch; no ensurepip needed (the base pip installs
        # into the venv's site-packages)
        site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        steps = [[base, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
                 [base, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--find-links",
                  wheels, "--no-deps", "--target", str(site), *PINNED]]
    else:
        pip = [str(venv_python(venv)), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        steps = [[base, "-m", "venv", str(venv)], pip + BASE, pip + ["--no-deps", *PINNED]]
    for step in steps:
        log("$ " + " ".join(step))
        out = subprocess.run(step, cwd="/", env=clean_env(), capture_output=True, text=True, timeout=1800,
                             check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(step[:6])} ... failed (exit {out.returncode}): "
                               f"{(out.stderr or out.stdout).strip()[-2000:]}")
    info = check(venv)
    (venv / STAMP).write_text(info + "\n")
    log(f"peer venv {venv}: {info}")
    return venv_python(venv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", default=str(DEFAULT_VENV))
    parser.add_argument("--wheels", default=None, help="install the pinned packages from this folder only")
    args = parser.parse_args()
    try:
        ensure(Path(args.venv), args.wheels)
    except RuntimeError as exc:
        sys.exit(f"cannot set up the ByteCheckpoint venv: {exc}")


if __name__ == "__main__":
    main()
