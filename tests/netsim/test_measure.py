"""``netsim measure``: size parsing, nccl-tests' columns and formulas, and real runs of every CPU backend."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from netsim.cli import app, main
from netsim.measure import BackendName, CollectiveName, MeasureConfig, MeasureError, launch
from netsim.measure.backends import TorchBackend, effective_size, element_count
from netsim.measure.cli import parse_sizes
from netsim.measure.report import summarize, to_csv
from netsim.measure_schema import MeasureReport

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def netsim(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    code = "import sys; from netsim.cli import main; main(sys.argv[1:])"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )


def test_sizes_parse_like_nccl_tests() -> None:
    assert parse_sizes("1K:8K") == (1024, 2048, 4096, 8192)
    assert parse_sizes("64,1M, 2G") == (64, 1 << 20, 2 << 30)
    for bad in ("1X", "8K:1K", "-3"):
        with pytest.raises(MeasureError):
            parse_sizes(bad)


def test_buffers_follow_nccl_tests_sizes() -> None:
    # size is the larger per-rank buffer: all-gather's output, reduce-scatter's input
    assert element_count(CollectiveName.allreduce, 4096, 4) == (1024, 1024)
    assert element_count(CollectiveName.allgather, 4096, 4) == (256, 1024)
    assert element_count(CollectiveName.reducescatter, 4096, 4) == (1024, 256)
    assert element_count(CollectiveName.alltoall, 4096, 4) == (1024, 1024)
    assert effective_size(CollectiveName.allgather, 1000, 3) == 996  # whole float32 blocks per rank


@pytest.mark.parametrize(
    "collective,factor",
    [
        (CollectiveName.allreduce, 2 * 3 / 4),
        (CollectiveName.allgather, 3 / 4),
        (CollectiveName.reducescatter, 3 / 4),
        (CollectiveName.alltoall, 3 / 4),
    ],
)
def test_summary_uses_nccl_tests_definitions(collective: CollectiveName, factor: float) -> None:
    config = MeasureConfig(BackendName.gloo, collective, 4, (1 << 20,), iters=2)
    size = config.effective_sizes()[0]
    times = [[0.010, 0.012], [0.011, 0.013], [0.010, 0.020], [0.014, 0.011]]
    results = [{"rank": rank, "times": {str(size): t}} for rank, t in reversed(list(enumerate(times)))]
    row = summarize(config, results, None).rows[0]
    assert row.seconds.p50 == pytest.approx(0.0115) and row.seconds.min == 0.010 and row.seconds.max == 0.020
    assert row.rank_seconds == tuple(map(tuple, times))  # every sample, by rank
    assert row.algbw == pytest.approx(size / 0.0115)
    assert row.busbw == pytest.approx(size / 0.0115 * factor)
    assert row.count == size // 4 and row.dtype == "float"
    header, line = to_csv(summarize(config, results, None)).splitlines()
    assert header.split(",")[5:11] == ["size", "count", "type", "time_us", "algbw_GBps", "busbw_GBps"]
    assert line.split(",")[5] == str(size)


def test_bad_arguments_fail_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    for args, needle in (
        (["--ranks", "1"], "--ranks"),
        (["--sizes", "1Q"], "1Q"),
        (["--hosts", "0,1"], "--fabric"),
        (["--backend", "tcp"], "tcp"),
        (["--json", "--csv"], "one of"),
        (["--backend", "gloo", "--splits", "2"], "split-tcp's"),
    ):
        with pytest.raises(SystemExit) as stop:
            main(["measure", *args])  # in-process: the console script's error handling, no subprocess
        err = capsys.readouterr().err
        assert stop.value.code == 2 and needle in err and err.startswith("error:"), err


def test_nccl_without_a_gpu_says_so() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the nccl backend runs in tools/gpu_run.sh")
    with pytest.raises(MeasureError, match="CUDA"):
        TorchBackend.start("nccl", 0, 1, ("127.0.0.1", 1), 5)


@pytest.mark.slow
def test_split_tcp_json_follows_the_measure_schema() -> None:
    out = netsim(
        "measure",
        "--backend",
        "split-tcp",
        "--collective",
        "alltoall",
        "--ranks",
        "3",
        "--sizes",
        "3K,96K",
        "--splits",
        "2",
        "--iters",
        "3",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    report = MeasureReport.from_dict(json.loads(out.stdout))
    assert [r.size_bytes for r in report.rows] == [3072, 98304]
    assert all(r.splits == 2 and r.policy == "minimal" and r.seconds.min > 0 for r in report.rows)
    for row in report.rows:  # the samples the quantiles summarize: 3 ranks x 3 iterations
        assert row.rank_seconds is not None and [len(t) for t in row.rank_seconds] == [3, 3, 3]
        samples = [t for times in row.rank_seconds for t in times]
        assert (min(samples), max(samples)) == (row.seconds.min, row.seconds.max)
        assert row.seconds.p50 == pytest.approx(float(np.median(samples)))
    subflows = report.meta["subflows_rank0_last_size"]
    assert {s["subflow"] for s in subflows} == {0, 1} and {s["direction"] for s in subflows} == {
        "send",
        "recv",
    }


@pytest.mark.slow
def test_gloo_backend_runs_on_loopback() -> None:
    out = netsim(
        "measure",
        "--backend",
        "gloo",
        "--collective",
        "reducescatter",
        "--ranks",
        "2",
        "--sizes",
        "4K:8K",
        "--iters",
        "2",
        "--csv",
    )
    assert out.returncode == 0, out.stderr
    rows = out.stdout.splitlines()[1:]
    assert [r.split(",")[:3] for r in rows] == [["gloo", "reducescatter", "2"]] * 2
    assert [int(r.split(",")[5]) for r in rows] == [4096, 8192]


@pytest.mark.slow
def test_mpi_backend_runs_under_mpiexec() -> None:
    if not (VENV_BIN / "mpiexec").exists():
        pytest.fail(
            "mpiexec is missing from the virtualenv: pip install mpi4py mpich (the dev extra has them)"
        )
    out = netsim(
        "measure",
        "--backend",
        "mpi",
        "--collective",
        "allgather",
        "--ranks",
        "3",
        "--sizes",
        "3K",
        "--iters",
        "3",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    row = MeasureReport.from_dict(json.loads(out.stdout)).rows[0]
    assert (row.backend, row.ranks, row.size_bytes, row.policy) == ("mpi", 3, 3072, None)
    assert row.busbw == pytest.approx(row.algbw * 2 / 3)


def test_a_failing_rank_is_reported_with_its_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # rank 1 is given a port that is already taken: the run fails and names that rank's error
    taken = socket.create_server(("127.0.0.1", 0))
    real = launch.free_ports
    monkeypatch.setattr(
        launch, "free_ports", lambda n, host="127.0.0.1": [*real(n - 1, host), taken.getsockname()[1]]
    )
    config = MeasureConfig(BackendName.split_tcp, CollectiveName.allreduce, 2, (1024,), timeout=5)
    with taken, pytest.raises(MeasureError, match=r"rank 1.*cannot listen"):
        launch.run_workers(config, None)


def test_cli_help_lists_fabric_and_measure() -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["--help"])
    assert "measure" in result.output and "fabric" in result.output
