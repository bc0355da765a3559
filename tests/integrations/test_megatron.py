"""framework="megatron": a tiny GPT (3 layers, vocab 301) saved under one TP x PP x DP layout and
loaded under another resumes like an uninterrupted run (equal losses and parameters after two more
optimizer steps), with the distributed optimizer on either side; Megatron <-> plain PyTorch through
the key map; dataloaders follow the data-parallel rank; mismatched configs fail naming the tensor."""

from __future__ import annotations

import importlib.util

import pytest
import torch

if importlib.util.find_spec("megatron") is None:  # not imported here: the spawned ranks import it
    pytest.skip("needs megatron-core==0.16.1 (the dev extra installs it)", allow_module_level=True)

import bytecheckpoint as bcp
from integrations.local_ranks import run_ranks
from integrations.megatron.names import gpt_key_map, load_full_by_name, megatron_view
from integrations.megatron.tiny_gpt import Arch, Layout, PlainGPT
from integrations.token_stream import TokenStream, TokenStreamLoader

pytestmark = pytest.mark.distributed
BEFORE, AFTER = range(3), range(3, 5)
TOL = {"rtol": 1e-5, "atol": 2e-5}


def _state(ddp, opt, sched, **extra) -> dict:
    return {"model": ddp, "optimizer": opt, "scheduler": sched, **extra}


def _resume_cases(rank: int, world: int, path: str, cases: list[tuple[Layout, list[Layout]]]) -> list[dict]:
    """For each source: train, save, continue (the uninterrupted reference); then each target loads
    the checkpoint (built with another seed and learning rate) and trains the same steps."""
    from integrations.megatron.tiny_gpt import build, full_model, train

    results = []
    for i, (source, targets) in enumerate(cases):
        ckpt = f"{path}/{i}"
        ddp, opt, sched = build(source)
        train(ddp, opt, sched, BEFORE)
        bcp.save(ckpt, _state(ddp, opt, sched, extra_state={"step": 3}), framework="megatron", timeout=60)
        saved = full_model(ddp)
        reference = train(ddp, opt, sched, AFTER), full_model(ddp)
        for target in targets:
            ddp, opt, sched = build(target, seed=7, lr=0.05)
            state = _state(ddp, opt, sched, extra_state=None)
            bcp.load(ckpt, state, framework="megatron", timeout=60)
            loaded = full_model(ddp)
            losses = train(ddp, opt, sched, AFTER)
            results.append({"case": f"{source} -> {target}", "extra": state["extra_state"], "saved": saved,
                            "loaded": loaded, "reference": reference, "resumed": (losses, full_model(ddp))})
    return results


def _check(result: dict) -> None:
    what = result["case"]
    assert result["extra"] == {"step": 3}, what
    for key, value in result["saved"].items():
        assert torch.equal(result["loaded"][key], value), f"{what}: {key} loaded differs from what was saved"
    (ref_losses, ref_params), (losses, params) = result["reference"], result["resumed"]
    if ref_losses[0] is not None and losses[0] is not None:
        torch.testing.assert_close(losses, ref_losses, **TOL, msg=f"{what}: losses after resuming")
    assert sorted(params) == sorted(ref_params), what
    for key, value in ref_params.items():
        torch.testing.assert_close(params[key], value, **TOL, msg=f"{what}: {key} after two more steps")


def _last_stage(results: list[list[dict]]) -> list[dict]:
    """Every case, taken from a rank where both runs had losses (the last pipeline stage)."""
    out = {}
    for rank_results in results:
        for r in rank_results:
            if r["reference"][0][0] is not None and r["resumed"][0][0] is not None:
                out.setdefault(r["case"], r)
    return list(out.values())


@pytest.mark.slow
def test_tp_pp_dp_changes_resume_like_an_uninterrupted_run(tmp_path) -> None:
    cases = [
        (Layout(2, 2, 1, True), [Layout(1, 1, 4, True)]),
        (Layout(2, 1, 2, True), [Layout(4, 1, 1), Layout(2, 2, 1, True)]),  # TP2 -> TP4; PP1 -> PP2
        (Layout(1, 2, 2), [Layout(1, 1, 4, True)]),  # PP2 -> PP1, plain -> distributed optimizer
    ]
    results = run_ranks(4, _resume_cases, str(tmp_path), cases, timeout=240)
    checked = _last_stage(results)
    assert sorted(r["case"] for r in checked) == sorted(f"{s} -> {t}" for s, ts in cases for t in ts)
    for rank_results in results:
        for r in rank_results:
            _check(r)


def _dataloader_and_vocab(rank: int, world: int, path: str) -> dict:
    """TP2 x DP2 saves a dataloader and a padded vocabulary (304 rows at TP2, 320 at TP4); TP4 x DP1 loads."""
    from megatron.core import parallel_state

    from integrations.megatron.adapter import declare_vocab_size
    from integrations.megatron.tiny_gpt import build, full_model

    arch = Arch(vocab_divisible_by=8)
    stream = TokenStream(num_docs=50, vocab_size=arch.vocab, min_len=3, max_len=20)
    ddp, opt, sched = build(Layout(2, 1, 2), arch)
    declare_vocab_size(ddp, arch.vocab)
    loader = TokenStreamLoader(stream, 2, 8, parallel_state.get_data_parallel_rank(), 2)
    before = [seg for _ in range(3) for seg in next(loader)[1]]
    bcp.save(path, _state(ddp, opt, sched, dataloader=loader), framework="megatron", timeout=60)
    saved = full_model(ddp)
    ddp, opt, sched = build(Layout(4, 1, 1), arch, seed=7)
    loader = TokenStreamLoader(stream, 2, 8)
    try:
        bcp.load(path, _state(ddp, opt, sched, dataloader=loader), framework="megatron", timeout=60)
        undeclared = None
    except bcp.ShapeMismatchError as exc:
        undeclared = str(exc)
    declare_vocab_size(ddp, arch.vocab)
    bcp.load(path, _state(ddp, opt, sched, dataloader=loader), framework="megatron", timeout=60)
    after = [seg for _ in range(6) for seg in next(loader)[1]]
    return {"before": before, "after": after, "saved": saved, "loaded": full_model(ddp), "undeclared": undeclared}


def test_dataloader_follows_data_parallel_rank_and_padded_vocab_reshards(tmp_path) -> None:
    results = run_ranks(4, _dataloader_and_vocab, str(tmp_path / "ck"), timeout=240)
    first = results[0]
    assert "word_embeddings" in first["undeclared"] and "(304, 16)" in first["undeclared"] and "(320, 16)" in first["undeclared"]
    for key in ("embedding.word_embeddings.weight", "output_layer.weight"):
        saved, loaded = first["saved"][key], first["loaded"][key]
        assert saved.shape == (304, 16) and loaded.shape == (320, 16)
        assert torch.equal(loaded[:304], saved), key
        assert not loaded[304:].any(), f"{key}: rows beyond the saved vocabulary padding are not zero"
    # exactly once: TP peers read the same data; every token is read once, before or after the resume
    before = {seg for r in results for seg in map(tuple, r["before"])}
    assert {tuple(s) for s in results[0]["before"]} == {tuple(s) for s in results[1]["before"]}  # TP peers
    after = [tuple(s) for s in first["after"]]
    tokens = [(p, t) for p, s, e in [*before, *after] for t in range(s, e)]
    assert len(tokens) == len(set(tokens)), "a token was read twice across the resume"
    for position in {p for p, _ in tokens}:
        got = sorted(t for p, t in tokens if p == position)
        assert got == list(range(len(got))), f"document at position {position}: tokens skipped"


def _dp2_save(rank: int, world: int, path: str) -> dict:
    from integrations.megatron.tiny_gpt import build, eval_loss, full_model, train

    ddp, opt, sched = build(Layout(1, 1, 2, True))
    train(ddp, opt, sched, BEFORE)
    bcp.save(path, _state(ddp, opt, sched), framework="megatron", timeout=60)
    loss = eval_loss(ddp, BEFORE.stop)
    return {"loss": loss, "reference": (train(ddp, opt, sched, AFTER), full_model(ddp))}


def _dp1_resume(rank: int, world: int, path: str, plain_path: str) -> dict:
    from integrations.megatron.tiny_gpt import build, eval_loss, full_model, train

    errors = {}
    for name, arch in {"layers": Arch(layers=4), "hidden": Arch(hidden=24)}.items():
        ddp, opt, sched = build(Layout(), arch)
        try:
            bcp.load(path, _state(ddp, opt, sched), framework="megatron", timeout=60)
        except bcp.ShapeMismatchError as exc:
            errors[name] = str(exc)
    ddp, opt, sched = build(Layout(1, 1, 1), seed=7, lr=0.05)
    bcp.load(path, _state(ddp, opt, sched), framework="megatron", timeout=60)
    resumed = train(ddp, opt, sched, AFTER), full_model(ddp)
    ddp, _, _ = build(Layout(), seed=9)
    bcp.load(plain_path, {"model": ddp}, framework="megatron", timeout=60)
    return {"errors": errors, "resumed": resumed, "plain_loss": eval_loss(ddp, 0)}


def _fsdp2_load(rank: int, world: int, path: str) -> float:
    """The Megatron checkpoint into a plain GPT sharded with FSDP2 (DTensor parameters)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(5)
    model = PlainGPT()
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.decoder.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    bcp.load(path, {"model": megatron_view(model)}, strict=False, timeout=60)
    with torch.no_grad():
        return model.loss(BEFORE.stop).item()


def test_dp2_to_dp1_and_to_plain_pytorch_and_fsdp2_models_and_back(tmp_path) -> None:
    path, plain_path = str(tmp_path / "megatron"), str(tmp_path / "plain")
    saved = run_ranks(2, _dp2_save, path)[0]
    # a Megatron checkpoint into a plain single-process PyTorch GPT, through the key map
    model = PlainGPT()
    with pytest.raises(bcp.StateMismatchError, match="megatron_view"):
        bcp.load(path, {"model": model}, framework="fsdp2")
    bcp.load(path, {"model": megatron_view(model)}, strict=False)
    with torch.no_grad():
        assert model.loss(BEFORE.stop).item() == pytest.approx(saved["loss"], rel=1e-6)
    for loss in run_ranks(2, _fsdp2_load, path):
        assert loss == pytest.approx(saved["loss"], rel=1e-6), "Megatron -> FSDP2"
    by_name = load_full_by_name(path)
    assert sorted(by_name) == sorted(model.state_dict())
    assert all(torch.equal(by_name[k], v) for k, v in model.state_dict().items())
    # ... and back: the plain model trains a step and saves in Megatron's layout; Megatron loads it
    torch.optim.SGD(model.parameters(), lr=0.1).zero_grad()
    model.loss(0).backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    bcp.save(plain_path, {"model": megatron_view(model)})
    with torch.no_grad():
        plain_loss = model.loss(0).item()
    out = run_ranks(1, _dp1_resume, path, plain_path)[0]
    assert out["plain_loss"] == pytest.approx(plain_loss, rel=1e-5)
    (ref_losses, ref_params), (losses, params) = saved["reference"], out["resumed"]
    torch.testing.assert_close(losses, ref_losses, **TOL)
    for key, value in ref_params.items():
        torch.testing.assert_close(params[key], value, **TOL, msg=f"DP2 -> DP1: {key} after two more steps")
    layers, hidden = out["errors"]["layers"], out["errors"]["hidden"]
    assert "'model.decoder.layers.self_attention.linear_qkv.weight': checkpoint [3, 48, 16], target [4, 48, 16]" in layers
    assert "'model.embedding.word_embeddings.weight': checkpoint [304, 16], target [304, 24]" in hidden, hidden


def test_gpt_key_map_round_trips() -> None:
    from integrations.megatron.names import gpt_ordinary_name

    names = [n for n, _ in PlainGPT(Arch(layers=2)).named_parameters()]
    keys = [gpt_key_map(n) for n in names]
    assert ("decoder.layers.self_attention.linear_qkv.layer_norm_weight", (1,)) in keys
    assert [gpt_ordinary_name(k, i) for k, i in keys] == names
