"""Staging through bounded host buffers yields every byte once, in order, slice by slice."""

from __future__ import annotations

import pytest
import torch

from bytecheckpoint.boxes import ShardBox
from bytecheckpoint.staging import staged_slices


def test_copied_slices_reassemble_every_tensor() -> None:
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(n, generator=g) for n in (0, 1, 100, 257, 64)]
    items = [((("t", i),), ShardBox((0,), (t.numel(),))) for i, t in enumerate(tensors)]
    items = [(key, t) for key, t in zip(items, tensors)]
    got: dict = {}
    for piece in staged_slices(items, slice_bytes=256, buffers=2, copy=True):
        got.setdefault(piece.key, bytearray()).extend(piece.data.numpy().tobytes())  # copy before release
        assert piece.data.numel() <= 256
        piece.release()
    for key, t in items:
        assert bytes(got[key]) == t.numpy().tobytes()


def test_a_failing_source_raises_in_the_consumer() -> None:
    class Exploding(torch.Tensor):
        def contiguous(self, *args, **kwargs):
            raise RuntimeError("boom while staging")

    items = [(("a",), torch.ones(300)), (("b",), torch.ones(4).as_subclass(Exploding))]
    seen = []
    with pytest.raises(RuntimeError, match="boom while staging"):
        for piece in staged_slices(items, slice_bytes=256, copy=True):
            seen.append(piece.key)
            piece.release()
    assert seen == [("a",)] * 5  # 1200 bytes of "a" in slices of 256, then the failure


def test_write_through_staging_matches_direct_bytes(tmp_path) -> None:
    import bytecheckpoint as bcp

    w = torch.randn(1000)
    bcp.save(tmp_path / "ck", {"w": w}, block_size=256)
    assert torch.equal(bcp.load_full(tmp_path / "ck")["w"], w)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (run by tools/gpu_run.sh)")
def test_device_tensors_are_staged_through_pinned_buffers(tmp_path) -> None:
    import bytecheckpoint as bcp

    w = torch.randn(3000, device="cuda")
    bcp.save(tmp_path / "ck", {"w": w}, block_size=1024)
    assert torch.equal(bcp.load_full(tmp_path / "ck")["w"], w.cpu())
