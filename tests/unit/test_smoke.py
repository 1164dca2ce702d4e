import pytest

import peernet


def test_errors_share_one_base():
    assert issubclass(peernet.CallTimeout, TimeoutError)
    assert issubclass(peernet.CallTimeout, peernet.PeerNetError)
    assert issubclass(peernet.EncodeError, TypeError)


def test_settings_are_checked_once_and_frozen():
    import dataclasses

    from peernet.settings import Settings

    s = Settings(call_timeout=2, handler_workers=3)
    assert s.call_timeout == 2.0 and type(s.call_timeout) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.call_timeout = 9.0  # type: ignore[misc]
    for bad in ({"call_timeout": 0}, {"io_timeout": -1}, {"close_timeout": float("nan")},
                {"call_timeout": float("inf")}, {"call_timeout": "soon"},
                {"handler_workers": 0}, {"max_message_size": 1.5},
                {"heartbeat_interval": 60.0, "heartbeat_timeout": 30.0}):
        with pytest.raises(ValueError):
            Settings(**bad)
    assert Settings().max_queued_bytes_per_peer == 4 * Settings().max_message_size
