import peernet


def test_errors_share_one_base():
    assert issubclass(peernet.CallTimeout, TimeoutError)
    assert issubclass(peernet.CallTimeout, peernet.PeerNetError)
    assert issubclass(peernet.EncodeError, TypeError)
