"""The ``bytecheckpoint`` command line: every command, its report, its exit codes and its errors.

Most tests call the console script's ``main`` in this process (the same code path as the installed
script: run_app's exit codes and one-line errors); a few run the installed script as a subprocess.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import bytecheckpoint as bcp
from bytecheckpoint.cli import main
from bytecheckpoint.leases import Lease
from bytecheckpoint.manager import LOCK_FILE
from bytecheckpoint.metadata import METADATA_FILE
from tests.bytecheckpoint.cli_runner import one_error_line, run, run_script


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "ck"
    torch.manual_seed(0)
    bcp.save(path, {"model": {"w": torch.randn(6, 4), "b": torch.arange(5, dtype=torch.int64)},
                    "scale": torch.tensor(2.5), "step": 3})
    return path


def data_file(path: Path) -> Path:
    (name,) = bcp.verify(path).data_files
    return path / name


# -- the failures the issue lists ------------------------------------------------------------------


def test_missing_path_prints_one_plain_line_and_exits_2_as_a_real_process(tmp_path: Path) -> None:
    out = run_script("inspect", str(tmp_path / "nonexistent"))
    assert out.returncode == 2 and out.stdout == ""
    line = one_error_line(out.stderr)
    assert "nonexistent" in line and "no such file or directory" in line


def test_a_file_and_an_unknown_scheme_are_one_line_errors_not_tracebacks(tmp_path: Path, capsys) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    for args in (("inspect", str(passwd)), ("inspect", "foo://bar")):
        code, out, err = run(capsys, *args)
        assert code == 2 and out == "", (args, out)
        assert args[1] in one_error_line(err)
    assert "is a file, not a checkpoint directory" in run(capsys, "inspect", str(passwd))[2]


def test_verify_json_on_a_damaged_checkpoint_prints_the_report_and_exits_1(ckpt: Path) -> None:
    with open(data_file(ckpt), "r+b") as f:
        f.write(b"\xff\xff\xff\xff")
    out = run_script("verify", str(ckpt), "--json")
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["ok"] is False and len(report["problems"]) == 1
    assert report["problems"][0]["type"] == "ChecksumMismatchError"
    assert "model.w" in report["problems"][0]["message"]  # the first bytes of the file are model.w's
    assert "ChecksumMismatchError" in one_error_line(out.stderr)


def test_failed_verify_exits_1_and_bad_path_exits_2(ckpt: Path, tmp_path: Path, capsys) -> None:
    assert run(capsys, "verify", str(ckpt))[0] == 0
    with open(data_file(ckpt), "r+b") as f:
        f.seek(30)
        f.write(b"\x00\x01")
    code, out, err = run(capsys, "verify", str(ckpt))
    assert code == 1 and "DAMAGED ChecksumMismatchError" in out
    one_error_line(err)
    code, out, err = run(capsys, "verify", str(tmp_path / "nowhere"))
    assert code == 2 and out == ""
    one_error_line(err)


def test_truncated_data_file_error_gives_the_file_size_not_the_requested_offset(ckpt: Path, capsys) -> None:
    meta = json.loads((ckpt / METADATA_FILE).read_text())
    last = max((c for t in meta["tensors"] for c in t["chunks"]), key=lambda c: c["byte_offset"])
    assert last["byte_offset"] > 10
    os.truncate(data_file(ckpt), 10)  # shorter than where the last chunk starts
    need = f"bytes {last['byte_offset']}-{last['byte_offset'] + last['byte_length']}"
    with pytest.raises(bcp.TruncatedDataError) as info:
        bcp.load(ckpt, {"model": {"w": torch.zeros(6, 4), "b": torch.zeros(5, dtype=torch.int64)},
                        "scale": torch.zeros(()), "step": None})
    assert "is 10 bytes long" in str(info.value)
    assert f"ends at byte {last['byte_offset']}" not in str(info.value)
    code, out, _ = run(capsys, "verify", str(ckpt), "--json")
    messages = [p["message"] for p in json.loads(out)["problems"]]
    assert code == 1 and any("is 10 bytes long" in m and need in m for m in messages), messages


# -- bad input to every command --------------------------------------------------------------------


def _bad_inputs(tmp_path: Path) -> dict[str, str]:
    a_file = tmp_path / "plain.txt"
    a_file.write_text("not a checkpoint")
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / METADATA_FILE).write_text('{"format": "bytecheckpoint", "version": 1, "tensors": [')
    return {"missing path": str(tmp_path / "missing"), "a file": str(a_file), "not a checkpoint": str(empty),
            "corrupt metadata": str(corrupt), "wrong scheme": "foo://bucket/x"}


COMMANDS = {
    "inspect": lambda p, ok, out: ["inspect", p],
    "verify": lambda p, ok, out: ["verify", p, "--json"],
    "ls": lambda p, ok, out: ["ls", p],
    "gc": lambda p, ok, out: ["gc", p],
    "reshard": lambda p, ok, out: ["reshard", p, out, "--world-size", "2"],
    "diff (first)": lambda p, ok, out: ["diff", p, ok],
    "diff (second)": lambda p, ok, out: ["diff", ok, p],
    "export": lambda p, ok, out: ["export", p, out, "--to", "torch"],
    "import": lambda p, ok, out: ["import", p, out, "--from", "dcp"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_input_to_every_command_is_one_line_and_exit_2(command: str, ckpt: Path, tmp_path: Path,
                                                             capsys) -> None:
    for what, path in _bad_inputs(tmp_path).items():
        if command in ("ls", "gc") and what == "corrupt metadata":
            continue  # a manager root has no metadata of its own: covered by "not a checkpoint"
        dst = tmp_path / f"out-{command}-{what}".replace(" ", "-")
        code, out, err = run(capsys, *COMMANDS[command](path, str(ckpt), str(dst)))
        assert code == 2, (what, out, err)
        assert out == "", (what, out)
        one_error_line(err)
        assert not dst.exists(), f"{command} wrote {dst} for bad input ({what})"


def test_usage_errors_are_exit_2(ckpt: Path, tmp_path: Path, capsys) -> None:
    for args in (["inspect"], ["inspect", str(ckpt), "--nope"], ["export", str(ckpt), "x", "--to", "onnx"],
                 ["reshard", str(ckpt), str(tmp_path / "r")],  # no layout given
                 ["reshard", str(ckpt), str(tmp_path / "r"), "--world-size", "2", "--consolidate"],
                 ["reshard", str(ckpt), str(tmp_path / "r"), "--world-size", "0"],
                 ["diff", str(ckpt), str(ckpt), "--atol", "-1"]):
        code, out, err = run(capsys, *args)
        assert code == 2 and out == "", args
        one_error_line(err)
    assert not (tmp_path / "r").exists()


def test_version_and_enum_choices_in_help(capsys) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("bytecheckpoint ")
    code, out, _ = run(capsys, "export", "--help")
    assert code == 0 and all(choice in out for choice in ("torch", "safetensors", "dcp"))
    code, out, _ = run(capsys, "import", "--help")
    assert code == 0 and "hf-dir" in out


def test_debug_raises_with_the_traceback(monkeypatch) -> None:
    monkeypatch.setenv("TRAINFRA_DEBUG", "0")  # --debug sets it to 1 in this process: restored afterwards
    with pytest.raises(ValueError, match="unknown storage scheme 'foo'"):
        main(["--debug", "inspect", "foo://bar"])


# -- inspect ---------------------------------------------------------------------------------------


def test_inspect_reports_tensors_layout_framework_writer_and_version(ckpt: Path, tmp_path: Path, capsys) -> None:
    code, out, _ = run(capsys, "inspect", str(ckpt), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["kind"] == "checkpoint" and doc["version"] == 1
    assert doc["writer"]["library"] == "bytecheckpoint" and doc["framework"] is None and doc["world_size"] == 1
    by_name = {t["name"]: t for t in doc["tensors"]}
    assert by_name["model.w"]["shape"] == [6, 4] and by_name["model.w"]["dtype"] == "float32"
    assert by_name["model.w"]["bytes"] == 96 and by_name["model.w"]["chunking"] == "whole"
    assert by_name["model.b"]["dtype"] == "int64" and by_name["scale"]["shape"] == []
    assert doc["values"] == ["step"] and doc["total_bytes"] == 96 + 40 + 4
    assert doc["layout"]["bytes_per_rank"] == [140]
    # chunked: reshard into 3 ranks along dim 0 and look again
    assert run(capsys, "reshard", str(ckpt), str(tmp_path / "r3"), "--world-size", "3")[0] == 0
    doc = json.loads(run(capsys, "inspect", str(tmp_path / "r3"), "--json")[1])
    w = next(t for t in doc["tensors"] if t["name"] == "model.w")
    assert w["chunking"] == "3 along dim 0 in 3 file(s)" and doc["world_size"] == 3
    assert [b["offsets"] for b in w["boxes"]] == [[0, 0], [2, 0], [4, 0]]
    code, out, _ = run(capsys, "inspect", str(tmp_path / "r3"))
    assert code == 0 and "3 along dim 0 in 3 file(s)" in out and "model.w" in out


def test_inspect_prints_names_literally(tmp_path: Path, capsys) -> None:
    path = tmp_path / "ck"
    bcp.save(path, {"[red]x[/]": torch.ones(2), "a\x1bb": torch.ones(1)})
    code, out, _ = run(capsys, "inspect", str(path))
    assert code == 0 and "[red]x[/]" in out and "\x1b" not in out and "a\\x1bb" in out


def test_inspect_reads_a_dcp_checkpoint(tmp_path: Path, capsys) -> None:
    import torch.distributed.checkpoint as dcp

    state = {"w": torch.randn(4, 3)}
    with pytest.warns(UserWarning):  # DCP warns when it runs without torch.distributed
        dcp.save(state, checkpoint_id=str(tmp_path / "dcp"))
    code, out, _ = run(capsys, "inspect", str(tmp_path / "dcp"), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["tensors"][0]["name"] == "w" and doc["tensors"][0]["shape"] == [4, 3]


# -- ls, gc and inspect on a manager root -----------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A manager root with complete steps 1 and 2 and step 3 abandoned by a dead save (stale claim)."""
    path = tmp_path / "run"
    manager = bcp.CheckpointManager(path)
    for step in (1, 2):
        manager.save(step, {"w": torch.full((8,), float(step)), "step": step})
    dead = path / "step_00000003"
    (dead / "data" / "x").mkdir(parents=True)
    (dead / "data" / "x" / "rank00000.bin").write_bytes(b"partial")
    (dead / LOCK_FILE).write_bytes(Lease(socket.gethostname(), _dead_pid(), "", time.time()).encode())
    return path


def test_ls_and_inspect_list_the_steps_of_a_manager_root(root: Path, capsys) -> None:
    for command in ("ls", "inspect"):
        code, out, _ = run(capsys, command, str(root), "--json")
        doc = json.loads(out)
        assert code == 0 and doc["kind"] == "manager"
        assert [(s["step"], s["complete"]) for s in doc["steps"]] == [(1, True), (2, True), (3, False)]
        assert doc["steps"][0]["bytes"] == 32 and doc["steps"][0]["tensors"] == 1
        assert doc["steps"][2]["claim_stale"] is True
    code, out, _ = run(capsys, "ls", str(root))
    assert code == 0 and "complete" in out and "stale claim" in out


def test_verify_on_a_manager_root_says_what_it_is(root: Path, capsys) -> None:
    code, _, err = run(capsys, "verify", str(root))
    assert code == 2 and "CheckpointManager root" in one_error_line(err) and "bytecheckpoint ls" in err


def test_gc_dry_run_then_gc_then_retention(root: Path, capsys) -> None:
    code, out, _ = run(capsys, "gc", str(root), "--dry-run", "--keep-last", "1", "--json")
    assert code == 0 and json.loads(out) == {"path": str(root), "dry_run": True, "incomplete_removed": [3],
                                              "retention_removed": [1]}
    assert (root / "step_00000003").exists() and (root / "step_00000001" / METADATA_FILE).exists()
    code, out, _ = run(capsys, "gc", str(root), "--json")
    assert code == 0 and json.loads(out)["incomplete_removed"] == [3] and json.loads(out)["retention_removed"] == []
    assert not (root / "step_00000003").exists()
    assert bcp.CheckpointManager(root).steps() == [1, 2]
    code, out, _ = run(capsys, "gc", str(root), "--keep-last", "1")
    assert code == 0 and "deleted" in out
    assert bcp.CheckpointManager(root).steps() == [2]


# -- diff ------------------------------------------------------------------------------------------


def test_diff_reports_each_difference_and_exits_1(ckpt: Path, tmp_path: Path, capsys) -> None:
    full = bcp.load_full(ckpt)
    assert run(capsys, "diff", str(ckpt), str(ckpt))[0] == 0
    other = tmp_path / "other"
    w = full["model"]["w"].clone()
    w[2, 1] += 0.5
    bcp.save(other, {"model": {"w": w, "b": full["model"]["b"]}, "extra": torch.zeros(3), "step": 4})
    code, out, err = run(capsys, "diff", str(ckpt), str(other), "--json")
    doc = json.loads(out)
    assert code == 1 and err == "" and doc["same"] is False
    tensors = {t["name"]: t for t in doc["tensors"]}
    assert tensors["model.w"]["status"] == "different" and tensors["model.w"]["mismatched"] == 1
    assert tensors["model.w"]["max_abs"] == pytest.approx(0.5)
    assert tensors["model.w"]["max_rel"] == pytest.approx(0.5 / abs(float(w[2, 1])))
    assert tensors["model.b"]["status"] == "equal"
    assert tensors["scale"]["status"] == "only_a" and tensors["extra"]["status"] == "only_b"
    assert doc["values"] == [{"name": "step", "status": "different", "a": 3, "b": 4}]
    code, out, _ = run(capsys, "diff", str(ckpt), str(other))
    assert code == 1 and "DIFFERENT" in out and "model.w" in out and "model.b" not in out


def test_diff_tolerances_and_dtype_mismatch(ckpt: Path, tmp_path: Path, capsys) -> None:
    full = bcp.load_full(ckpt)
    near = tmp_path / "near"
    state = {"model": {"w": full["model"]["w"] + 1e-4, "b": full["model"]["b"]}, "scale": full["scale"], "step": 3}
    bcp.save(near, state)
    assert run(capsys, "diff", str(ckpt), str(near))[0] == 1
    code, out, _ = run(capsys, "diff", str(ckpt), str(near), "--atol", "1e-3", "--json")
    assert code == 0 and {t["name"]: t["status"] for t in json.loads(out)["tensors"]}["model.w"] == "close"
    cast = tmp_path / "cast"
    bcp.save(cast, {**state, "model": {"w": full["model"]["w"].double(), "b": full["model"]["b"]}})
    code, out, _ = run(capsys, "diff", str(ckpt), str(cast), "--json")
    w = next(t for t in json.loads(out)["tensors"] if t["name"] == "model.w")
    assert code == 1 and w["status"] == "dtype" and (w["dtype_a"], w["dtype_b"]) == ("float32", "float64")


# -- export and import -----------------------------------------------------------------------------


def test_export_then_import_round_trips_through_the_cli(ckpt: Path, tmp_path: Path, capsys) -> None:
    code, out, _ = run(capsys, "export", str(ckpt), str(tmp_path / "x.pt"), "--to", "torch", "--json")
    assert code == 0 and json.loads(out)["format"] == "torch"
    exported = torch.load(tmp_path / "x.pt", weights_only=True)
    assert torch.equal(exported["model"]["w"], bcp.load_full(ckpt)["model"]["w"])
    code, _, _ = run(capsys, "import", str(tmp_path / "x.pt"), str(tmp_path / "back"), "--from", "torch")
    assert code == 0
    assert run(capsys, "diff", str(ckpt), str(tmp_path / "back"))[0] == 0


def test_export_with_a_rename_map(ckpt: Path, tmp_path: Path, capsys) -> None:
    rename = tmp_path / "rename.json"
    rename.write_text(json.dumps({"model.": "encoder."}))
    code, _, _ = run(capsys, "export", str(ckpt), str(tmp_path / "st"), "--to", "safetensors", "--rename",
                     str(rename))
    assert code == 0
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "st" / "model.safetensors")
    assert "encoder.w" in tensors and "model.w" not in tensors
    rename.write_text("[1, 2]")
    code, out, err = run(capsys, "export", str(ckpt), str(tmp_path / "st2"), "--to", "safetensors", "--rename",
                         str(rename))
    assert code == 2 and out == "" and "--rename" in one_error_line(err) and not (tmp_path / "st2").exists()


def test_relative_paths_work_as_in_the_readme(ckpt: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    out = run_script("reshard", "ck", "ck-2", "--world-size", "2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "diff", "ck", "ck-2")
    assert code == 0 and "same" in out
    assert run(capsys, "inspect", "file://ck-2")[0] == 0


def test_altered_metadata_fails_verify_with_1_and_inspect_with_2(ckpt: Path, capsys) -> None:
    meta = ckpt / METADATA_FILE
    meta.write_text(meta.read_text().replace('"shape":[6,4]', '"shape":[4,6]'))
    code, out, err = run(capsys, "verify", str(ckpt), "--json")
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False and doc["problems"][0]["type"] == "ChecksumMismatchError"
    assert "metadata checksum mismatch" in doc["problems"][0]["message"]
    one_error_line(err)
    code, out, err = run(capsys, "inspect", str(ckpt))
    assert code == 2 and out == "" and "metadata checksum mismatch" in one_error_line(err)
