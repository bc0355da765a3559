"""export_checkpoint / import_checkpoint: each format read back by its own library gives the same
tensors; imports load into the matching model; Hugging Face folders; bad input; S3."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch import nn

import bytecheckpoint as bcp
from bytecheckpoint.interop import ConversionError, export_checkpoint, import_checkpoint
from tests.bytecheckpoint.storage.s3server import BUCKET, moto_server  # noqa: F401 - fixture


class TinyLM(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(32, 8)
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))
        self.head = nn.Linear(8, 32, bias=False)
        self.head.weight.data = self.head.weight.data.to(torch.bfloat16).float()


def _saved(tmp_path) -> tuple[str, TinyLM]:
    model = TinyLM(0)
    path = str(tmp_path / "src")
    bcp.save(path, {"model": model, "step": 7, "cfg": {"lr": 0.5, "betas": (0.9, 0.99)},
                    "ids": torch.arange(5, dtype=torch.int64)})
    return path, model


def _same_model(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_export_to_torch_reads_back_with_torch_load_weights_only(tmp_path) -> None:
    src, model = _saved(tmp_path)
    report = export_checkpoint(src, str(tmp_path / "out" / "model.pt"), to="torch")
    got = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    assert got["step"] == 7 and got["cfg"] == {"lr": 0.5, "betas": (0.9, 0.99)}
    assert torch.equal(got["ids"], torch.arange(5))
    assert all(torch.equal(got["model"][k], v) for k, v in model.state_dict().items())
    assert report.to_dict()["files"] == ["model.pt"] and report.tensors == 7 and report.values == 2


def test_export_to_sharded_safetensors_in_the_hugging_face_layout(tmp_path) -> None:
    src, model = _saved(tmp_path)
    out = tmp_path / "hf"
    seen: list[int] = []
    report = export_checkpoint(src, str(out), to="safetensors", rename={"model.": ""}, max_shard_bytes=600,
                               progress=seen.append)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert sorted(os.listdir(out)) == [*shards, "model.safetensors.index.json"]
    assert list(report.files) == [*shards, "model.safetensors.index.json"]
    tensors = {}
    for shard in shards:
        tensors.update(load_file(out / shard))
    assert sorted(tensors) == sorted([*model.state_dict(), "ids"])
    assert all(torch.equal(tensors[k], v) for k, v in model.state_dict().items())
    assert index["metadata"]["total_size"] == report.bytes == sum(t.numel() * t.element_size() for t in tensors.values())
    assert sum(seen) == sum((out / s).stat().st_size for s in shards)

    single = tmp_path / "hf1"
    export_checkpoint(src, str(single), to="safetensors")
    assert os.listdir(single) == ["model.safetensors"]
    assert torch.equal(load_file(single / "model.safetensors")["model.embed.weight"], model.embed.weight)


def test_export_to_dcp_reads_back_with_dcp_load(tmp_path) -> None:
    src, model = _saved(tmp_path)
    export_checkpoint(src, str(tmp_path / "dcp"), to="dcp")
    state = {"model": {k: torch.zeros_like(v) for k, v in model.state_dict().items()},
             "ids": torch.zeros(5, dtype=torch.int64), "step": 0, "cfg": {"lr": 0.0, "betas": None}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=str(tmp_path / "dcp"), no_dist=True)
    assert all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())
    assert state["step"] == 7 and state["cfg"] == {"lr": 0.5, "betas": (0.9, 0.99)}


@pytest.mark.parametrize("fmt", ["torch", "safetensors", "dcp"])
def test_export_then_import_loads_into_the_model_with_every_value(tmp_path, fmt) -> None:
    src, model = _saved(tmp_path)
    out = str(tmp_path / ("m.pt" if fmt == "torch" else "out"))
    export_checkpoint(src, out, to=fmt, max_shard_bytes=600)
    source = str(tmp_path / "out" / "model.safetensors.index.json") if fmt == "safetensors" else out
    report = import_checkpoint(source, str(tmp_path / "back"), from_=fmt)
    assert "metadata.json" in report.files and report.tensors == 7
    bcp.verify(str(tmp_path / "back"))  # written through bcp.save: checksummed
    target = TinyLM(1)
    state = {"model": target, "step": None, "cfg": None, "ids": torch.zeros(5, dtype=torch.int64)}
    bcp.load(str(tmp_path / "back"), state)
    assert _same_model(target, model)
    assert state["step"] == 7 and state["cfg"] == {"lr": 0.5, "betas": (0.9, 0.99)}


def _hf_dir(tmp_path, model: TinyLM) -> str:
    folder = tmp_path / "hf-model"
    folder.mkdir()
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    keys = sorted(sd)
    halves = {"model-00001-of-00002.safetensors": keys[:3], "model-00002-of-00002.safetensors": keys[3:]}
    for name, names in halves.items():
        save_file({k: sd[k] for k in names}, folder / name, metadata={"format": "pt"})
    weight_map = {k: name for name, names in halves.items() for k in names}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "tiny", "hidden_size": 8, "vocab_size": 32}))
    return str(folder)


def test_a_hugging_face_folder_imports_and_loads_into_the_matching_model(tmp_path) -> None:
    model = TinyLM(0)
    report = import_checkpoint(_hf_dir(tmp_path, model), str(tmp_path / "ck"), from_="hf-dir")
    assert report.tensors == len(model.state_dict()) and report.values == 1
    target = TinyLM(1)
    state = {"model": target, "config": None}
    bcp.load(str(tmp_path / "ck"), state)
    assert _same_model(target, model)
    assert state["config"] == {"model_type": "tiny", "hidden_size": 8, "vocab_size": 32}


def test_a_shard_that_lacks_a_key_its_index_names_is_an_error_naming_both(tmp_path) -> None:
    folder = _hf_dir(tmp_path, TinyLM(0))
    index_file = tmp_path / "hf-model" / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    index["weight_map"]["extra.weight"] = "model-00001-of-00002.safetensors"
    index_file.write_text(json.dumps(index))
    with pytest.raises(ConversionError, match=r"model-00001-of-00002\.safetensors.*'extra\.weight'"):
        import_checkpoint(folder, str(tmp_path / "ck"), from_="hf-dir")
    assert not (tmp_path / "ck").exists()


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_torch_import_never_unpickles_code(tmp_path) -> None:
    marker = tmp_path / "ran"
    torch.save({"w": torch.ones(2), "evil": _RunsCode(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(ConversionError, match=r"evil\.pt.*weights_only=True"):
        import_checkpoint(str(tmp_path / "evil.pt"), str(tmp_path / "ck"), from_="torch")
    assert not marker.exists()


def test_bad_input_names_the_format_file_or_key(tmp_path) -> None:
    src, _ = _saved(tmp_path)
    with pytest.raises(ConversionError, match=r"to='onnx'.*'torch', 'safetensors', 'dcp'"):
        export_checkpoint(src, str(tmp_path / "x"), to="onnx")
    with pytest.raises(ConversionError, match=r"from_='gguf'.*'hf-dir'"):
        import_checkpoint(src, str(tmp_path / "x"), from_="gguf")
    with pytest.raises(ConversionError, match=r"not empty"):
        export_checkpoint(src, src, to="safetensors")
    with pytest.raises(ConversionError, match=r"nope\.pt: no such file"):
        import_checkpoint(str(tmp_path / "nope.pt"), str(tmp_path / "x"), from_="torch")
    with pytest.raises(ConversionError, match=r"config\.json: not found"):
        import_checkpoint(str(tmp_path), str(tmp_path / "x"), from_="hf-dir")
    with pytest.raises(ConversionError, match=r"'model\.embed\.weight' appears twice"):
        export_checkpoint(src, str(tmp_path / "y.pt"), to="torch", rename={"model.layers.0.weight": "model.embed.weight"})
    torch.save({"c": torch.ones(2, dtype=torch.complex128)}, tmp_path / "c.pt")
    import_checkpoint(str(tmp_path / "c.pt"), str(tmp_path / "c"), from_="torch")
    with pytest.raises(ConversionError, match=r"tensor 'c' \(torch\.complex128.*safetensors"):
        export_checkpoint(str(tmp_path / "c"), str(tmp_path / "c-st"), to="safetensors")


@pytest.mark.slow
def test_export_to_and_import_from_s3(tmp_path, moto_server) -> None:  # noqa: F811 - the fixture
    src, model = _saved(tmp_path)
    export_checkpoint(src, f"s3://{BUCKET}/interop/hf", to="safetensors", max_shard_bytes=600)
    export_checkpoint(src, f"s3://{BUCKET}/interop/m.pt", to="torch")
    report = import_checkpoint(f"s3://{BUCKET}/interop/hf/model.safetensors.index.json", f"s3://{BUCKET}/interop/ck",
                               from_="safetensors")
    assert report.tensors == 7
    import_checkpoint(f"s3://{BUCKET}/interop/m.pt", str(tmp_path / "from-s3"), from_="torch")
    for path in (f"s3://{BUCKET}/interop/ck", str(tmp_path / "from-s3")):
        target = TinyLM(1)
        state = {"model": target, "step": None, "cfg": None, "ids": None}
        bcp.load(path, state)
        assert _same_model(target, model) and state["step"] == 7


@pytest.mark.parametrize(("rename", "path", "expected"), [
    ({"model.": ""}, ("model", "layer.weight"), ("layer.weight",)),
    ({"model.": "net."}, ("model", "layer.weight"), ("net", "layer.weight")),
    ({"model.layer.weight": "model.fc.weight"}, ("model", "layer.weight"), ("model", "fc.weight")),
    ({"": "model."}, ("layer.weight",), ("model", "layer.weight")),
    ({"model.": ""}, ("model.layer.weight",), ("layer.weight",)),
    ({"a.": "x.", "a.b.": "y."}, ("a", "b", "c"), ("y", "c")),  # the longest prefix wins
    ({"q.": "r."}, ("a", 0, "w"), ("a", 0, "w")),
])
def test_renaming_keeps_the_nesting_it_can(rename, path, expected) -> None:
    from bytecheckpoint.interop.keys import Renamer

    assert Renamer(rename).path(path) == expected
