"""docs/FORMAT.md is enough to read a checkpoint with numpy alone (no torch on the reading side)."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import torch
import xxhash

import bytecheckpoint as bcp

NUMPY = {"float32": np.dtype("<f4"), "int64": np.dtype("<i8"), "bool": np.dtype("|b1"),
         "bfloat16": np.dtype(ml_dtypes.bfloat16), "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2)}


def read_with_numpy(root) -> dict[str, np.ndarray]:
    meta = json.loads((root / "metadata.json").read_text())
    assert meta["format"] == "bytecheckpoint" and meta["version"] == 1
    recorded = meta.pop("metadata_checksum")
    canonical = json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert xxhash.xxh3_64_hexdigest(canonical.encode()) == recorded
    block = meta["checksum"]["block_size"]
    out = {}
    for t in meta["tensors"]:
        arr = np.zeros(t["shape"], dtype=NUMPY[t["dtype"]])
        for c in t["chunks"]:
            with open(root / c["file"], "rb") as f:
                f.seek(c["byte_offset"])
                raw = f.read(c["byte_length"])
            for i, h in enumerate(c["hashes"]):
                assert xxhash.xxh3_64_hexdigest(raw[i * block : (i + 1) * block]) == h
            box = tuple(slice(o, o + n) for o, n in zip(c["offsets"], c["lengths"]))
            arr[box] = np.frombuffer(raw, dtype=arr.dtype).reshape(c["lengths"])
        out[".".join(map(str, t["path"]))] = arr
    return out


def test_numpy_reader_from_the_spec_reads_every_dtype_and_flat_shard(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 10, generator=g)
    state = {
        "w": bcp.FlatShard(w.reshape(-1).clone(), (6, 10), 0),
        "b": torch.randn(5, 3, generator=g).to(torch.bfloat16),
        "f8": torch.randn(7, generator=g).to(torch.float8_e5m2),
        "i": torch.arange(-3, 9).reshape(3, 4),
        "m": torch.tensor([True, False, True]),
    }
    bcp.save(tmp_path / "ck", state, block_size=64)
    arrays = read_with_numpy(tmp_path / "ck")
    np.testing.assert_array_equal(arrays["w"], w.numpy())
    np.testing.assert_array_equal(arrays["b"].view(np.uint16), state["b"].view(torch.int16).numpy().view(np.uint16))
    # bfloat16 from raw bits, the numpy-only way the spec gives
    bits = arrays["b"].view("<u2").astype("<u4") << 16
    np.testing.assert_array_equal(bits.view("<f4"), state["b"].float().numpy())
    np.testing.assert_array_equal(arrays["f8"].view(np.uint8), state["f8"].view(torch.uint8).numpy())
    np.testing.assert_array_equal(arrays["i"], state["i"].numpy())
    np.testing.assert_array_equal(arrays["m"], state["m"].numpy())
