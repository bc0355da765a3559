"""The ``bytecheckpoint`` commands on s3:// paths, against a real S3 server (moto, its own process)."""

from __future__ import annotations

import json
import uuid

import pytest
import torch

import bytecheckpoint as bcp
from bytecheckpoint.storage import resolve_storage
from tests.bytecheckpoint.cli_runner import one_error_line, run
from tests.bytecheckpoint.storage.s3server import BUCKET, moto_server  # noqa: F401 - fixture

pytestmark = pytest.mark.slow


def test_inspect_verify_reshard_diff_ls_gc_on_s3(moto_server, capsys) -> None:  # noqa: F811 - fixture
    prefix = f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"
    src, dst = f"{prefix}/src", f"{prefix}/dst"
    state = {"model": {"w": torch.randn(8, 3)}, "step": 1}
    bcp.save(src, state)
    code, out, _ = run(capsys, "inspect", src, "--json")
    assert code == 0 and json.loads(out)["tensors"][0]["shape"] == [8, 3]
    code, out, _ = run(capsys, "verify", src, "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    code, out, _ = run(capsys, "reshard", src, dst, "--world-size", "2", "--json")
    assert code == 0 and len(json.loads(out)["data_files"]) == 2
    assert run(capsys, "diff", src, dst)[0] == 0
    assert torch.equal(bcp.load_full(dst)["model"]["w"], state["model"]["w"])

    root = f"{prefix}/run"
    manager = bcp.CheckpointManager(root, keep_last=None)
    for step in (1, 2):
        manager.save(step, state)
    code, out, _ = run(capsys, "ls", root, "--json")
    assert code == 0 and [s["step"] for s in json.loads(out)["steps"]] == [1, 2]
    code, out, _ = run(capsys, "gc", root, "--keep-last", "1", "--json")
    assert code == 0 and json.loads(out)["retention_removed"] == [1]
    assert manager.steps() == [2]

    code, out, err = run(capsys, "inspect", f"{prefix}/missing")
    assert code == 2 and out == "" and "not a committed checkpoint" in one_error_line(err)
    damaged = bcp.verify(dst).data_files[0]
    resolve_storage(dst).commit(damaged, b"\x00" * 8)  # replace a data file with 8 bytes
    code, out, err = run(capsys, "verify", dst, "--json")
    assert code == 1 and json.loads(out)["problems"][0]["type"] == "TruncatedDataError"
    assert "is 8 bytes long" in json.loads(out)["problems"][0]["message"]
