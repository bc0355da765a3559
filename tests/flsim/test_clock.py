import pytest

from flsim.clock import estimate_offset, offset_sample
from flsim.errors import RecordError


def test_symmetric_exchange_gives_exact_offset():
    # client clock = server clock + 5; 0.1 s each way, 0.3 s at the client
    off, delay = offset_sample(100.0, 105.1, 105.4, 100.5)
    assert off == pytest.approx(5.0)
    assert delay == pytest.approx(0.2)


def test_intersection_of_asymmetric_exchanges_brackets_truth():
    true = -2.0
    # (down, up) one-way times very unequal (polling); truth must lie inside every estimate's bounds
    exchanges = []
    for i, (down, up) in enumerate([(3.0, 0.1), (0.1, 2.5), (1.0, 1.2)]):
        t1 = 10.0 * i
        t2 = t1 + down + true
        t3 = t2 + 0.5
        t4 = t3 - true + up
        exchanges.append((t1, t2, t3, t4))
    est = estimate_offset(exchanges)
    assert est.low <= true <= est.high
    assert est.error_bound == pytest.approx((0.1 + 0.1) / 2)
    assert abs(est.offset - true) <= est.error_bound


def test_no_exchange_and_inconsistent_bounds_raise():
    with pytest.raises(RecordError, match="at least one"):
        estimate_offset([])
    with pytest.raises(RecordError, match="do not intersect"):
        estimate_offset([(0, 1, 1.1, 0.2), (0, -5, -4.9, 0.2)])
    with pytest.raises(RecordError, match="t1 <= t4"):
        offset_sample(1.0, 2.0, 3.0, 0.5)
