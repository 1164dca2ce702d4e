"""The handler table: what this node lets peers run, and how one call is dispatched.

Default-deny: a name that was never exposed (or was revoked) answers "no such handler".
``authorize(peer)`` runs before every call of its handler and only ``True`` (the object,
not a truthy value) lets the call through; an ``authorize`` that raises means forbidden.
A handler may refuse a call itself by raising :class:`~peernet.Forbidden` (the peer gets
"forbidden", never the message). A handler that raises anything else --
``BaseException`` included -- becomes a ``handler_error`` outcome carrying the
exception's type name only; the traceback goes to the local log and never to the peer.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, TypeVar, overload

from ._proto.messages import (
    FORBIDDEN,
    HANDLER_ERROR,
    NO_SUCH_HANDLER,
    exception_detail,
    is_valid_handler_name,
)
from .errors import Forbidden, InvalidHandlerName
from .ids import PeerId

__all__ = ["HandlerFn", "AuthorizeFn", "Handler", "Outcome", "HandlerTable"]

log = logging.getLogger(__name__)

HandlerFn = Callable[[PeerId, Any], Any]
AuthorizeFn = Callable[[PeerId], bool]
F = TypeVar("F", bound=HandlerFn)


@dataclass(frozen=True, slots=True)
class Handler:
    name: str
    fn: HandlerFn
    authorize: AuthorizeFn | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of dispatching one call: a value, or an error code and detail."""

    value: Any = None
    #: None on success, else one of the wire error codes.
    error: str | None = None
    #: For ``handler_error``: the exception's type name. Never a message or traceback.
    detail: str | None = None


_NO_SUCH_HANDLER = Outcome(error=NO_SUCH_HANDLER)
_FORBIDDEN = Outcome(error=FORBIDDEN)


def check_handler_name(name: object) -> str:
    """Return ``name`` if it is a valid handler name, else raise InvalidHandlerName."""
    if type(name) is not str or not is_valid_handler_name(name):
        raise InvalidHandlerName(
            f"handler names are 1-64 characters, start with a letter and use only "
            f"letters, digits and _ . : - ; got {name!r:.80}"
        )
    return name


class HandlerTable:
    """Thread-safe map of exposed handlers. Lookups take no lock."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._lock = threading.Lock()

    @overload
    def expose(self, name: str, fn: F, *, authorize: AuthorizeFn | None = None) -> F: ...
    @overload
    def expose(
        self, name: str, fn: None = None, *, authorize: AuthorizeFn | None = None
    ) -> Callable[[F], F]: ...

    def expose(self, name, fn=None, *, authorize=None):
        """Expose ``fn(peer, args) -> result`` under ``name``; replaces an earlier one.

        Without ``fn`` it returns a decorator. ``authorize(peer) -> bool`` gates every
        call; only ``True`` allows it.
        """
        check_handler_name(name)
        if authorize is not None and not callable(authorize):
            raise TypeError(f"authorize must be callable, got {type(authorize).__name__}")
        if fn is None:

            def decorator(f: F) -> F:
                self.expose(name, f, authorize=authorize)
                return f

            return decorator
        if not callable(fn):
            raise TypeError(f"handler must be callable, got {type(fn).__name__}")
        with self._lock:
            self._handlers[name] = Handler(name, fn, authorize)
        return fn

    def revoke(self, name: str) -> bool:
        """Stop exposing ``name``. Returns whether it was exposed."""
        with self._lock:
            return self._handlers.pop(name, None) is not None

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def __len__(self) -> int:
        return len(self._handlers)

    def dispatch(self, peer: PeerId, name: str, args: Any) -> Outcome:
        """Run one call from ``peer`` and say how it went. Never raises."""
        handler = self._handlers.get(name)
        if handler is None:
            return _NO_SUCH_HANDLER
        if handler.authorize is not None:
            try:
                allowed = handler.authorize(peer)
            except BaseException:  # noqa: BLE001 -- a broken policy must deny, not crash
                log.error("authorize for %r raised; call from %s refused", name, peer.short,
                          exc_info=True)
                return _FORBIDDEN
            if allowed is not True:
                return _FORBIDDEN
        try:
            return Outcome(value=handler.fn(peer, args))
        except Forbidden as exc:
            log.info("handler %r refused a call from %s: %s", name, peer.short, exc)
            return _FORBIDDEN
        except BaseException as exc:  # noqa: BLE001 -- see module docstring
            log.error("handler %r raised for %s", name, peer.short, exc_info=True)
            return Outcome(error=HANDLER_ERROR, detail=exception_detail(exc))
