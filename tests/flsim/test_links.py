import json

import pytest

from flsim.errors import ProfileError
from flsim.links import BUILTIN, load_profile


def test_builtin_profiles_are_asymmetric_where_the_paper_says():
    g5, eth = load_profile("5g-sa"), load_profile("ethernet")
    assert g5.up_mbit < g5.down_mbit and eth.up_mbit == eth.down_mbit
    assert set(BUILTIN) == {"ethernet", "wifi", "5g-sa"}
    assert g5.spec().impaired and g5.spec().up_bps == g5.up_mbit * 1e6


def test_custom_json_and_toml(tmp_path):
    j = tmp_path / "lte.json"
    j.write_text(json.dumps({"down_mbit": 30, "up_mbit": 8, "delay_ms": 25, "loss_pct": 0.5}))
    p = load_profile(j)
    assert (p.name, p.up_delay_ms, p.down_delay_ms, p.loss_pct) == ("lte", 25.0, 25.0, 0.5)
    t = tmp_path / "sat.toml"
    t.write_text('name = "geo"\ndown_mbit = 50\nup_mbit = 5\nup_delay_ms = 300\n')
    p = load_profile(t)
    assert (p.name, p.up_delay_ms, p.down_delay_ms) == ("geo", 300.0, 0.0)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a mapping"),
    ('{"up_mbit": 5}', "missing required key 'down_mbit'"),
    ('{"down_mbit": 5, "up_mbit": 0}', "'up_mbit' must be > 0"),
    ('{"down_mbit": 5, "up_mbit": 5, "loss_pct": 120}', "'loss_pct' must be >= 0 and <= 100"),
    ('{"down_mbit": "fast", "up_mbit": 5}', "'down_mbit' must be a finite number, found 'fast'"),
    ('{"down_mbit": 5, "up_mbit": 5, "delay": 3}', "unknown key(s) ['delay']"),
])
def test_bad_profile_files_give_clear_errors(tmp_path, content, message):
    f = tmp_path / "bad.json"
    f.write_text(content)
    with pytest.raises(ProfileError) as err:
        load_profile(f)
    assert message in str(err.value) and str(f) in str(err.value)


def test_unknown_name(tmp_path):
    with pytest.raises(ProfileError, match="neither a built-in"):
        load_profile(tmp_path / "nope.json")
    with pytest.raises(ProfileError, match="not valid TOML"):
        (tmp_path / "x.toml").write_text("down_mbit = = 3")
        load_profile(tmp_path / "x.toml")


def test_mahimahi_trace_profile(tmp_path):
    (tmp_path / "up.trace").write_text("".join(f"{ms}\n" for ms in range(1, 101)))  # 1 packet/ms
    f = tmp_path / "cell.json"
    f.write_text(json.dumps({"down_mbit": 20, "up_trace": "up.trace", "delay_ms": 5}))
    p = load_profile(f)
    assert p.up_mbit == pytest.approx(12.0)  # 1500 B * 8 / 1 ms
    assert p.spec().up_trace == str((tmp_path / "up.trace").resolve())


@pytest.mark.parametrize("trace, message", [
    ("", "at least one opportunity"),
    ("5\n3\n", ":2: timestamps must not decrease (3 after 5)"),
    ("1\nx\n", ":2: expected a non-negative integer millisecond, found 'x'"),
])
def test_bad_traces_give_clear_errors(tmp_path, trace, message):
    (tmp_path / "t.trace").write_text(trace)
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"down_mbit": 20, "up_trace": "t.trace"}))
    with pytest.raises(ProfileError) as err:
        load_profile(f)
    assert message in str(err.value) and "t.trace" in str(err.value)
