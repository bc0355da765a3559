"""Damaged checkpoints and mismatched targets raise specific errors naming file, tensor and key."""

from __future__ import annotations

import json
import os

import pytest
import torch

import bytecheckpoint as bcp
from bytecheckpoint.metadata import METADATA_FILE


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "ck"
    state = {"model": {"w": torch.arange(4096, dtype=torch.float32).reshape(64, 64), "b": torch.ones(8)}, "step": 3}
    bcp.save(path, state, block_size=1024)
    return path


def _data_file(path) -> str:
    files = bcp.verify(path).data_files
    assert len(files) == 1
    return os.path.join(path, files[0])


def _target():
    return {"model": {"w": torch.zeros(64, 64), "b": torch.zeros(8)}, "step": None}


def test_truncated_data_file(ckpt) -> None:
    f = _data_file(ckpt)
    os.truncate(f, os.path.getsize(f) - 100)
    with pytest.raises(bcp.TruncatedDataError, match=r"rank00000\.bin.*truncated.*model\.(w|b)"):
        bcp.load(ckpt, _target())
    with pytest.raises(bcp.TruncatedDataError, match=r"rank00000\.bin.*model\.(w|b)"):
        bcp.verify(ckpt)


def test_flipped_byte_fails_the_checksum(ckpt) -> None:
    f = _data_file(ckpt)
    meta = json.loads((ckpt / METADATA_FILE).read_text())
    w_chunk = next(t for t in meta["tensors"] if t["path"] == ["model", "w"])["chunks"][0]
    with open(f, "r+b") as fh:
        fh.seek(w_chunk["byte_offset"] + 5000)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(bcp.ChecksumMismatchError, match=r"rank00000\.bin: checksum mismatch in tensor 'model\.w'"):
        bcp.load(ckpt, _target())
    with pytest.raises(bcp.ChecksumMismatchError, match=r"'model\.w' at bytes"):
        bcp.verify(ckpt)
    # the rows away from the damaged block still load (only their blocks are read and checked)
    rows = bcp.ShardedTensor(torch.zeros(4, 64), (64, 64), (60, 0))
    bcp.load(ckpt, {"model": {"w": rows}}, strict=False)
    assert torch.equal(rows.data, torch.arange(3840, 4096, dtype=torch.float32).reshape(4, 64))


def test_missing_metadata_means_incomplete(ckpt) -> None:
    os.remove(ckpt / METADATA_FILE)
    with pytest.raises(bcp.IncompleteCheckpointError, match="metadata.json not found.*not a committed checkpoint"):
        bcp.load(ckpt, _target())
    with pytest.raises(FileNotFoundError):
        bcp.load_full(ckpt)


def test_unknown_format_version(ckpt) -> None:
    doc = json.loads((ckpt / METADATA_FILE).read_text())
    doc["version"] = 42
    (ckpt / METADATA_FILE).write_text(json.dumps(doc))
    with pytest.raises(bcp.UnsupportedVersionError, match="metadata.json: format version 42 is not supported"):
        bcp.load(ckpt, _target())


def test_shape_mismatch(ckpt) -> None:
    target = _target()
    target["model"]["w"] = torch.zeros(64, 32)
    with pytest.raises(bcp.ShapeMismatchError, match=r"'model\.w': checkpoint \[64, 64\], target \[64, 32\]"):
        bcp.load(ckpt, target)


def test_dtype_mismatch_even_when_not_strict(ckpt) -> None:
    target = _target()
    target["model"]["b"] = torch.zeros(8, dtype=torch.float16)
    with pytest.raises(bcp.DtypeMismatchError, match=r"'model\.b': checkpoint float32, target float16"):
        bcp.load(ckpt, target, strict=False)


def test_missing_key_under_strict(ckpt) -> None:
    target = _target()
    target["model"]["extra"] = torch.zeros(2)
    with pytest.raises(bcp.MissingKeyError, match=r"'model\.extra'"):
        bcp.load(ckpt, target)


def test_missing_data_file(ckpt) -> None:
    os.remove(_data_file(ckpt))
    with pytest.raises(bcp.TruncatedDataError, match="data file is missing"):
        bcp.load(ckpt, _target())


def test_corrupt_metadata_json(ckpt) -> None:
    (ckpt / METADATA_FILE).write_bytes(b'{"format": "bytecheckpoint", "vers')
    with pytest.raises(bcp.MetadataError, match="metadata.json: metadata is not valid JSON"):
        bcp.load(ckpt, _target())


def test_a_flip_inside_metadata_that_stays_valid_json_is_caught(ckpt) -> None:
    raw = (ckpt / METADATA_FILE).read_bytes()
    assert b'"value":3' in raw
    (ckpt / METADATA_FILE).write_bytes(raw.replace(b'"value":3', b'"value":7'))  # step 3 -> 7, still valid JSON
    with pytest.raises(bcp.ChecksumMismatchError, match="metadata.json: metadata checksum mismatch"):
        bcp.load(ckpt, _target())
    with pytest.raises(bcp.ChecksumMismatchError, match="metadata checksum mismatch"):
        bcp.verify(ckpt)
