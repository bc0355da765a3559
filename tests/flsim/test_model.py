import pytest
import torch

from flsim.model import SqueezeNetCifar, load_transport_state, parameter_bytes, transport_state


@pytest.mark.parametrize("packing", ["tensors", "flat"])
def test_transport_state_round_trips(packing):
    torch.manual_seed(0)
    src, dst = SqueezeNetCifar(width=0.25), SqueezeNetCifar(width=0.25)
    sent = transport_state(src, packing)
    assert sum(t.numel() * t.element_size() for t in sent.values()) == parameter_bytes(src)
    load_transport_state(dst, sent, packing)
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_flat_packing_is_one_vector_and_averages_like_the_tensors():
    torch.manual_seed(0)
    a, b = SqueezeNetCifar(width=0.25), SqueezeNetCifar(width=0.25)
    flat = transport_state(a, "flat")
    assert list(flat) == ["flat"] and flat["flat"].dim() == 1
    # FedAvg of flat vectors == flat vector of the per-tensor FedAvg
    avg = {"flat": (transport_state(a, "flat")["flat"] + transport_state(b, "flat")["flat"]) / 2}
    per_tensor = {k: (x + y) / 2 for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True)}
    m1, m2 = SqueezeNetCifar(width=0.25), SqueezeNetCifar(width=0.25)
    load_transport_state(m1, avg, "flat")
    load_transport_state(m2, per_tensor, "tensors")
    for x, y in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(x, y)


def test_flat_packing_errors_name_the_problem():
    model = SqueezeNetCifar(width=0.25)
    flat = transport_state(model, "flat")["flat"]
    with pytest.raises(ValueError, match="has 9 values, the model needs"):
        load_transport_state(model, {"flat": flat[:9]}, "flat")
    with pytest.raises(ValueError, match="expects one entry 'flat'"):
        load_transport_state(model, {"w": flat}, "flat")
    with pytest.raises(ValueError, match="packing must be one of"):
        transport_state(model, "zip")
    model.register_buffer("steps", torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\['steps'\] are not"):
        transport_state(model, "flat")
