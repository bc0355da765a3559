"""The bytecheckpoint command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

import bytecheckpoint as bcp


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bytecheckpoint.cli", *args], capture_output=True, text=True, timeout=120, check=False)


def test_inspect_and_verify(tmp_path) -> None:
    path = tmp_path / "ck"
    bcp.save(path, {"model": {"w": torch.ones(4, 8)}, "step": 3})
    out = run_cli("inspect", str(path), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["tensors"] == [{"name": "model.w", "dtype": "float32", "shape": [4, 8], "chunks": 1, "bytes": 128}]
    assert doc["values"] == ["step"]
    assert run_cli("verify", str(path)).returncode == 0

    data = path / bcp.verify(path).data_files[0]
    with open(data, "r+b") as f:
        f.write(b"\xff\xff")
    bad = run_cli("verify", str(path))
    assert bad.returncode == 1 and "ChecksumMismatchError" in bad.stderr and "model.w" in bad.stderr


def test_missing_checkpoint_is_a_clear_error(tmp_path) -> None:
    out = run_cli("inspect", str(tmp_path / "nothing"))
    assert out.returncode == 1 and "IncompleteCheckpointError" in out.stderr and os.path.basename(tmp_path) in out.stderr
