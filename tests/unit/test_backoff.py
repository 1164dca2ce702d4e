import pytest

from peernet._proto.backoff import Backoff


def test_doubles_from_half_a_second_to_thirty_without_jitter():
    b = Backoff(jitter=0)
    assert [b.delay(n, 0.7) for n in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_jitter_stays_within_its_band():
    b = Backoff()
    assert b.delay(3, 0.0) == 4.0
    assert b.delay(3, 1.0) == 2.0
    assert 2.0 <= b.delay(3, 0.37) <= 4.0


def test_huge_attempt_numbers_do_not_overflow():
    assert Backoff(jitter=0).delay(10_000, 0.5) == 30.0


@pytest.mark.parametrize("kwargs", [dict(base_s=0), dict(factor=0.5), dict(cap_s=0.1),
                                    dict(jitter=1.5)])
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        Backoff(**kwargs)
