"""Plain values round-trip through tagged JSON; pickle only on explicit opt-in."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bytecheckpoint.errors import MetadataError, UnsupportedValueError
from bytecheckpoint.values import decode_value, encode_value

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=8),
    st.binary(max_size=16), st.sampled_from([math.inf, -math.inf]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=5), inner, max_size=4),
        st.dictionaries(st.integers(-5, 5), inner, max_size=3),
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(values)
def test_plain_values_round_trip_through_json(value) -> None:
    encoded = json.loads(json.dumps(encode_value(value, "v"), allow_nan=False))
    assert decode_value(encoded, "v") == value


def test_nan_round_trips() -> None:
    assert math.isnan(decode_value(encode_value(float("nan"), "v"), "v"))


class Opaque:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque)


def test_arbitrary_objects_need_pickle_opt_in_on_both_sides() -> None:
    with pytest.raises(UnsupportedValueError, match="cfg.obj: a .*Opaque is not a tensor or plain value"):
        encode_value(Opaque(), "cfg.obj")
    encoded = encode_value(Opaque(), "cfg.obj", allow_pickle=True)
    with pytest.raises(UnsupportedValueError, match="cfg.obj: this value was stored with pickle"):
        decode_value(encoded, "cfg.obj")
    assert decode_value(encoded, "cfg.obj", allow_pickle=True) == Opaque()


@pytest.mark.parametrize("doc", [{"$float": "one"}, {"$unknown": 1}, {"$bytes": "!!"}, {"$tuple": [1], "x": 2}])
def test_malformed_tagged_values_raise_metadata_errors(doc) -> None:
    with pytest.raises(MetadataError, match="step"):
        decode_value(doc, "step")
