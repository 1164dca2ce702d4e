import pytest

from peernet.errors import ConnectionLost
from peernet._io.replies import ReplyTable


def test_close_if_empty_refuses_only_while_calls_are_pending():
    table = ReplyTable()
    fut = table.add(7)
    assert not table.close_if_empty(lambda: ConnectionLost("retired"))
    table.pop(7)
    assert table.close_if_empty(lambda: ConnectionLost("retired"))
    with pytest.raises(ConnectionLost, match="retired"):
        table.add(8)
    assert not fut.done()


def test_fail_all_gives_every_caller_its_own_exception():
    table = ReplyTable()
    a, b = table.add(1), table.add(2)
    table.fail_all(lambda: ConnectionLost("gone"))
    assert isinstance(a.exception(), ConnectionLost) and a.exception() is not b.exception()
    with pytest.raises(ConnectionLost):
        table.add(3)
