"""PyTorch DCP checkpoints read in place: resharded loads across world sizes, load_full, verify's
note that DCP has no checksums, damaged blobs, and a metadata pickle that tries to run code."""

from __future__ import annotations

import fractions
import os
import pickle
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

import bytecheckpoint as bcp
from bytecheckpoint.dcp_format import NO_CHECKSUMS_NOTE
from bytecheckpoint.interop import import_checkpoint
from bytecheckpoint.loader import find_damage, read_metadata
from bytecheckpoint.storage import resolve_storage
from integrations.local_ranks import run_ranks

ROWS, COLS = 12, 5


def _expected() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {"w": torch.randn(ROWS, COLS, generator=g), "b": torch.arange(8, dtype=torch.bfloat16)}


def _dcp_save_worker(rank: int, world: int, path: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    full = _expected()
    state = {
        "model": {"w": distribute_tensor(full["w"], mesh, [Shard(0)]), "b": distribute_tensor(full["b"], mesh, [Replicate()])},
        "step": 42,
        "cfg": {"lr": 0.5, "betas": (0.9, 0.99)},
    }
    dcp.save(state, checkpoint_id=path)


def _our_load_worker(rank: int, world: int, path: str) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    w = distribute_tensor(torch.zeros(ROWS, COLS), mesh, [Shard(1)])  # another layout than the save's
    state = {"model": {"w": w, "b": torch.zeros(8, dtype=torch.bfloat16)}, "step": None, "cfg": None}
    summary = bcp.load(path, state, timeout=60)
    return {"w": w.full_tensor(), "b": state["model"]["b"].clone(), "step": state["step"], "cfg": state["cfg"],
            "bytes": summary.bytes_read, "world": dist.get_world_size()}


@pytest.mark.distributed
@pytest.mark.slow
def test_dcp_save_at_4_ranks_loads_through_ours_at_2_and_imports(tmp_path) -> None:
    path = str(tmp_path / "dcp")
    run_ranks(4, _dcp_save_worker, path)
    assert sorted(os.listdir(path)) == [".metadata", *(f"__{r}_0.distcp" for r in range(4))]
    want = _expected()
    results = run_ranks(2, _our_load_worker, path)
    for r in results:
        assert r["world"] == 2
        assert torch.equal(r["w"], want["w"]) and torch.equal(r["b"], want["b"])
        assert r["step"] == 42 and r["cfg"] == {"lr": 0.5, "betas": (0.9, 0.99)}
    meta = read_metadata(resolve_storage(path))
    assert meta.writer.library == "torch.distributed.checkpoint" and meta.writer.world_size == 4
    w_entry, b_entry = meta.tensor_by_fqn()["model.w"], meta.tensor_by_fqn()["model.b"]
    assert [c.box.offsets for c in w_entry.chunks] == [(3 * r, 0) for r in range(4)]
    # a column shard needs every row block of w once, and the one saved chunk of b
    blobs = sum(c.location.length for c in (*w_entry.chunks, *b_entry.chunks))
    assert [r["bytes"] for r in results] == [blobs, blobs]

    full = bcp.load_full(path)
    assert torch.equal(full["model"]["w"], want["w"]) and full["step"] == 42

    report = import_checkpoint(path, str(tmp_path / "imported"), from_="dcp")
    assert (report.tensors, report.values) == (2, 2)  # step, and cfg (DCP's leaves cfg.lr, cfg.betas as one dict)
    assert bcp.verify(str(tmp_path / "imported")).note == ""  # ours: checksummed
    again = bcp.load_full(str(tmp_path / "imported"))
    assert torch.equal(again["model"]["w"], want["w"]) and again["cfg"] == {"lr": 0.5, "betas": (0.9, 0.99)}


def _save_single(path: str, state: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save(state, checkpoint_id=path, no_dist=True)


def test_verify_reads_every_chunk_and_says_that_dcp_has_no_checksums(tmp_path) -> None:
    path = str(tmp_path / "dcp")
    _save_single(path, {"w": torch.arange(64.0), "n": 3})
    report = bcp.verify(path)
    assert report.note == NO_CHECKSUMS_NOTE and report.tensors == 1 and report.bytes_verified > 0

    data = next(tmp_path.joinpath("dcp").glob("*.distcp"))
    meta = read_metadata(resolve_storage(path))
    loc = meta.tensors[0].chunks[0].location
    raw = bytearray(data.read_bytes())
    raw[loc.offset : loc.offset + 4] = b"XXXX"  # the blob's zip header
    data.write_bytes(bytes(raw))
    _, problems = find_damage(resolve_storage(path))
    assert len(problems) == 1 and "tensor 'w'" in str(problems[0])
    with pytest.raises(bcp.CheckpointError, match=r"tensor 'w'.*not a torch.save blob"):
        bcp.load(path, {"w": torch.zeros(64)}, strict=False)


def test_a_truncated_dcp_data_file_names_the_file_and_tensor(tmp_path) -> None:
    path = str(tmp_path / "dcp")
    _save_single(path, {"w": torch.arange(1000.0)})
    data = next(tmp_path.joinpath("dcp").glob("*.distcp"))
    data.write_bytes(data.read_bytes()[:200])
    for call in (lambda: bcp.load_full(path), lambda: bcp.load(path, {"w": torch.zeros(1000)})):
        with pytest.raises(bcp.TruncatedDataError, match=r"__0_0\.distcp.*200 bytes long.*'w'"):
            call()


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_metadata_pickle_that_would_run_code_is_refused_without_running_it(tmp_path) -> None:
    path = tmp_path / "dcp"
    _save_single(str(path), {"w": torch.ones(3)})
    marker = tmp_path / "ran"
    evil = _RunsCode()
    evil.marker = marker
    (path / ".metadata").write_bytes(pickle.dumps(evil))
    for call in (lambda: bcp.load_full(str(path)), lambda: bcp.load(str(path), {"w": torch.zeros(3)}),
                 lambda: read_metadata(resolve_storage(str(path)))):
        with pytest.raises(bcp.UnsupportedValueError, match=r"refers to (posix|os)\.system.*refused"):
            call()
    assert not marker.exists()


def test_a_value_that_needs_full_unpickling_loads_only_with_allow_pickle(tmp_path) -> None:
    path = str(tmp_path / "dcp")
    _save_single(path, {"w": torch.ones(2), "ratio": fractions.Fraction(1, 3), "n": 5})
    state = {"w": torch.zeros(2), "n": None}
    bcp.load(path, state, strict=False)  # the unsafe value is never decoded unless asked for
    assert state["n"] == 5
    with pytest.raises(bcp.UnsupportedValueError, match=r"ratio.*allow_pickle=True"):
        bcp.load_full(path)
    assert bcp.load_full(path, allow_pickle=True)["ratio"] == fractions.Fraction(1, 3)


def test_a_missing_dcp_key_names_the_nearest_saved_ones(tmp_path) -> None:
    path = str(tmp_path / "dcp")
    _save_single(path, {"model": {"layer.weight": torch.ones(2)}})
    with pytest.raises(bcp.MissingKeyError, match=r"'model\.layer\.weights'.*nearest.*'model\.layer\.weight'"):
        bcp.load(path, {"model": {"layer.weights": torch.zeros(2)}})


def _tamper(path: str, change) -> None:
    """Rewrite the DCP metadata after ``change(metadata)``, keeping only DCP's own classes in it."""
    with open(os.path.join(path, ".metadata"), "rb") as f:
        md = pickle.load(f)  # our own test file, written just above
    change(md)
    with open(os.path.join(path, ".metadata"), "wb") as f:
        pickle.dump(md, f)


def test_dcp_metadata_built_from_allowed_classes_is_still_checked(tmp_path) -> None:
    path = str(tmp_path / "dcp")
    _save_single(path, {"w": torch.arange(8.0).reshape(2, 4)})

    def escape(md) -> None:
        for info in md.storage_data.values():
            info.relative_path = "../outside.distcp"

    _tamper(path, escape)
    with pytest.raises(bcp.MetadataError, match=r"'\.\./outside\.distcp' must be a relative path inside"):
        bcp.load_full(path)

    _save_single(str(tmp_path / "dcp2"), {"w": torch.arange(8.0).reshape(2, 4)})

    def gap(md) -> None:
        md.state_dict_metadata["w"].chunks[0].sizes = torch.Size([1, 4])

    _tamper(str(tmp_path / "dcp2"), gap)
    with pytest.raises(bcp.MetadataError, match=r"tensor 'w'.*do not tile.*cover 4 of 8"):
        bcp.load(str(tmp_path / "dcp2"), {"w": torch.zeros(2, 4)})
