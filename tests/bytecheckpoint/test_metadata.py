"""Metadata parsing validates every field and names where a problem is."""

from __future__ import annotations

import copy

import pytest

from bytecheckpoint.errors import MetadataError, UnsupportedVersionError
from bytecheckpoint.metadata import CheckpointMetadata

GOOD = {
    "format": "bytecheckpoint",
    "version": 1,
    "writer": {"library": "bytecheckpoint", "library_version": "0", "framework": None, "world_size": 2, "layout": {}},
    "checksum": {"algorithm": "xxh3_64", "block_size": 64},
    "tensors": [
        {
            "path": ["model", "w"],
            "dtype": "bfloat16",
            "shape": [4, 40],
            "chunks": [
                {"offsets": [0, 0], "lengths": [4, 40], "file": "data/x/rank00000.bin", "byte_offset": 0,
                 "byte_length": 320, "hashes": ["0"] * 5},
            ],
        }
    ],
    "values": [{"path": ["step"], "value": 3}],
}


def test_good_metadata_round_trips() -> None:
    meta = CheckpointMetadata.from_dict(copy.deepcopy(GOOD), "m")
    assert meta.tensors[0].fqn == "model.w"
    assert CheckpointMetadata.from_json(meta.to_json(), "m") == meta


def _broken(mutate):
    doc = copy.deepcopy(GOOD)
    mutate(doc)
    return doc


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda d: d.update(format="dcp"), "not a bytecheckpoint metadata file"),
        (lambda d: d["tensors"][0].update(dtype="float7"), "unknown dtype 'float7'"),
        (lambda d: d["tensors"][0]["chunks"][0].update(byte_length=10), "byte_length 10 != 160 elements x 2 bytes"),
        (lambda d: d["tensors"][0]["chunks"][0].update(offsets=[1, 0]), "lies outside shape"),
        (lambda d: d["tensors"][0]["chunks"][0].update(file="../../etc/passwd"), "must be a relative path"),
        (lambda d: d["tensors"][0]["chunks"][0].update(hashes=["0"]), "expected 5 block hashes, found 1"),
        (lambda d: d["values"].append({"path": ["model", "w"], "value": 1}), "'model.w' appears twice"),
        (lambda d: d["writer"].update(world_size=0), "writer.world_size"),
        (lambda d: d.update(tensors={}), "tensors: expected list"),
    ],
)
def test_bad_metadata_names_the_field(mutate, pattern) -> None:
    with pytest.raises(MetadataError, match=pattern):
        CheckpointMetadata.from_dict(_broken(mutate), "ckpt/metadata.json")


def test_unknown_version_is_its_own_error() -> None:
    with pytest.raises(UnsupportedVersionError, match="format version 99 is not supported"):
        CheckpointMetadata.from_dict(_broken(lambda d: d.update(version=99)), "m")


def test_non_json_is_a_metadata_error() -> None:
    with pytest.raises(MetadataError, match="not valid JSON"):
        CheckpointMetadata.from_json(b"\x80\x04pickle", "ckpt/metadata.json")
