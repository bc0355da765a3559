"""Dataloader resharding: after a save at one data-parallel degree and a resume at another,
every token of every document taken is seen exactly once, and no document is skipped."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bytecheckpoint as bcp
from integrations.local_ranks import run_ranks
from integrations.reshardable import RNGState
from integrations.token_stream import Segment, TokenStream, TokenStreamLoader

STREAM = TokenStream(num_docs=50, vocab_size=97, min_len=3, max_len=40, seed=3)


def check_exactly_once(stream: TokenStream, emitted: list[Segment], loaders: list[TokenStreamLoader]) -> None:
    """Every taken document's tokens appear exactly once (emitted or still buffered), and the
    positions the loaders will take next neither repeat a taken one nor leave one behind."""
    pieces: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for position, start, end in [*emitted, *(s for ld in loaders for s in ld.buffer)]:
        pieces[position].append((start, end))
    for position, spans in pieces.items():
        spans.sort()
        cursor = 0
        for start, end in spans:
            assert start == cursor, f"document at position {position}: tokens {cursor}..{start} lost or repeated"
            cursor = end
        assert cursor == stream.length(stream.document_at(position)), f"document at position {position} incomplete"
    taken = set(pieces)
    first, world = loaders[0], len(loaders)
    consumed = {ld.rank + j * world for ld in loaders for j in range(ld.taken)}
    horizon = len(first.pending) + max(0, max(taken, default=-1) - first.frontier + 1)
    upcoming = {first._position(i) for i in range(horizon) if i not in consumed}
    assert not upcoming & taken, f"positions {sorted(upcoming & taken)[:5]} would be taken twice"
    skipped = [p for p in range(max(taken, default=-1) + 1) if p not in taken and p not in upcoming]
    assert not skipped, f"positions {skipped[:5]} were skipped"


def run_loaders(loaders: list[TokenStreamLoader], steps: int) -> list[Segment]:
    segments: list[Segment] = []
    for _ in range(steps):
        for ld in loaders:
            tokens, segs = next(ld)
            assert tokens.shape == (ld.batch_size, ld.seq_len + 1)
            expected = torch.cat([STREAM.tokens(STREAM.document_at(p), s, e) for p, s, e in segs])
            assert torch.equal(tokens.reshape(-1), expected)
            segments += segs
    return segments


def reshard(loaders: list[TokenStreamLoader], world: int) -> list[TokenStreamLoader]:
    states = [ld.reshard_state() for ld in loaders]
    replicated = states[0][0]
    new = [TokenStreamLoader(STREAM, loaders[0].batch_size, loaders[0].seq_len, r, world) for r in range(world)]
    for r, ld in enumerate(new):
        ld.load_reshard_state(replicated, [s[1] for s in states], r, world)
    return new


@settings(max_examples=40, deadline=None)
@given(
    worlds=st.lists(st.integers(1, 5), min_size=2, max_size=4),
    steps=st.integers(0, 4),
    batch=st.integers(1, 3),
    seq=st.integers(1, 16),
)
def test_every_token_once_across_any_sequence_of_reshards(worlds, steps, batch, seq) -> None:
    loaders = [TokenStreamLoader(STREAM, batch, seq, r, worlds[0]) for r in range(worlds[0])]
    emitted = run_loaders(loaders, steps)
    for world in worlds[1:]:
        loaders = reshard(loaders, world)
        emitted += run_loaders(loaders, steps)
    check_exactly_once(STREAM, emitted, loaders)


def _train_and_save(rank: int, world: int, path: str) -> list[Segment]:
    loader = TokenStreamLoader(STREAM, 2, 8, rank, world)
    segments = run_loaders([loader], 3)
    torch.manual_seed(100 + rank)
    bcp.save(path, {"dataloader": loader, "rng": RNGState(), "extra_state": {"step": 3}}, framework="ddp", timeout=60)
    return segments, torch.rand(3)


def _resume(rank: int, world: int, path: str) -> tuple[list[Segment], dict, torch.Tensor]:
    loader = TokenStreamLoader(STREAM, 2, 8, rank, world)
    state = {"dataloader": loader, "rng": RNGState(), "extra_state": None}
    bcp.load(path, state, framework="ddp", timeout=60)
    assert state["extra_state"] == {"step": 3}
    after_rng = torch.rand(3)
    segments = run_loaders([loader], 4)
    final = {"pending": loader.pending, "frontier": loader.frontier, "taken": loader.taken, "buffer": loader.buffer}
    return segments, final, after_rng


@pytest.mark.distributed
def test_dataloader_and_rng_reshard_from_4_to_2_real_ranks(tmp_path) -> None:
    path = str(tmp_path / "ck")
    saved = run_ranks(4, _train_and_save, path)
    resumed = run_ranks(2, _resume, path)
    emitted = [s for segs, _ in saved for s in segs] + [s for segs, _, _ in resumed for s in segs]
    loaders = []
    for rank, (_, final, _) in enumerate(resumed):
        ld = TokenStreamLoader(STREAM, 2, 8, rank, 2)
        ld.pending, ld.frontier, ld.taken, ld.buffer = final["pending"], final["frontier"], final["taken"], final["buffer"]
        loaders.append(ld)
    check_exactly_once(STREAM, emitted, loaders)
    # rank r of the new world continues old rank r's random streams
    for rank, (_, _, after_rng) in enumerate(resumed):
        assert torch.equal(after_rng, saved[rank][1])


class CountingLoader:
    """A dataloader with only the state_dict protocol (like torchdata's StatefulDataLoader)."""

    def __init__(self, rank: int) -> None:
        self.position = 0
        self.rank = rank

    def state_dict(self) -> dict:
        return {"position": self.position, "rank": self.rank}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]
        assert state["rank"] == self.rank


def _save_stateful(rank: int, world: int, path: str) -> None:
    loader = CountingLoader(rank)
    loader.position = 10 + rank
    bcp.save(path, {"dataloader": loader}, framework="ddp", timeout=60)


def _load_stateful(rank: int, world: int, path: str) -> int | str:
    loader = CountingLoader(rank)
    try:
        bcp.load(path, {"dataloader": loader}, framework="ddp", timeout=60)
    except bcp.StateMismatchError as exc:
        return str(exc)
    return loader.position


@pytest.mark.distributed
def test_state_dict_dataloaders_resume_per_rank_and_refuse_a_new_world_size(tmp_path) -> None:
    path = str(tmp_path / "ck")
    run_ranks(2, _save_stateful, path)
    assert run_ranks(2, _load_stateful, path) == [10, 11]
    messages = run_ranks(3, _load_stateful, path)
    assert all("saved by 2 ranks and is loaded by 3" in m for m in messages)
