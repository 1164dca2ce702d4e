"""The handler table: what this node lets peers run, and how one call is dispatched.

Default-deny: a name that was never exposed (or was revoked) answers "no such handler".
``authorize(peer)`` runs before every call of its handler and only ``True`` (the object,
not a truthy value) lets the call through; an ``authorize`` that raises means forbidden.
A handler may refuse a call itself by raising :class:`~peernet.Forbidden` (the peer gets
"forbidden", never the message), or by raising :class:`~peernet.NoSuchHandler` say that
what was asked for does not exist (``rpc`` does, for a function not on its allow-list:
the caller was authorized, so "no such function" tells it nothing it may not know).
A handler that raises anything else --
``BaseException`` included -- becomes a ``handler_error`` outcome carrying the
exception's type name only. The peer never sees the traceback; this node does: the
table hands it to ``on_error`` (``Node(on_handler_error=...)``), by default
:func:`report_handler_error`, which shows it the way ``threading.excepthook`` shows an
uncaught exception in a thread.
"""

from __future__ import annotations

import inspect
import logging
import sys
import threading
import traceback
from dataclasses import dataclass
from typing import Any, Callable, TypeVar, overload

from ._proto.messages import (
    FORBIDDEN,
    HANDLER_ERROR,
    NO_SUCH_HANDLER,
    exception_detail,
    is_valid_handler_name,
)
from ._text import escape, escape_lines
from .errors import Forbidden, InvalidHandlerName, NoSuchHandler
from .ids import PeerId

__all__ = ["HandlerFn", "AuthorizeFn", "Handler", "Outcome", "HandlerTable",
           "HandlerFailure", "report_handler_error", "RESERVED_PREFIX", "is_reserved"]

log = logging.getLogger(__name__)

HandlerFn = Callable[[PeerId, Any], Any]
AuthorizeFn = Callable[[PeerId], bool]
F = TypeVar("F", bound=HandlerFn)


@dataclass(frozen=True, slots=True)
class Handler:
    name: str
    fn: HandlerFn
    authorize: AuthorizeFn | None


@dataclass(slots=True)  # not frozen: one is made per call, and frozen costs ~0.3 us
class Outcome:
    """The result of dispatching one call: a value, or an error code and detail.
    Read-only by convention (the shared error outcomes are reused)."""

    value: Any = None
    #: None on success, else one of the wire error codes.
    error: str | None = None
    #: For ``handler_error``: the exception's type name. Never a message or traceback.
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class HandlerFailure:
    """What ``Node(on_handler_error=...)`` is given when a handler raised, or returned
    a result that cannot be sent back.

    The peer got only ``RemoteError`` with the exception's type name; this is the whole
    story, for this node's eyes only.
    """

    #: The handler's name.
    handler: str
    #: The peer whose call or send it was serving.
    peer: PeerId
    #: What it raised (``exception.__traceback__`` is intact).
    exception: BaseException
    #: True when the handler's ``authorize`` raised (the call was refused as forbidden).
    in_authorize: bool = False
    #: True when the handler returned, but its result cannot be sent back (not CBOR
    #: data, or larger than ``max_message_size``): ``exception`` is the
    #: :class:`~peernet.EncodeError` or :class:`~peernet.MessageTooLarge` that says
    #: why; the caller got ``RemoteError``.
    in_result: bool = False


def _logging_configured(logger: logging.Logger) -> bool:
    """Whether an application set up logging that would show ``logger``'s records:
    a handler other than our NullHandler on it or an ancestor (the root included)."""
    current: logging.Logger | None = logger
    while current is not None:
        if any(not isinstance(h, logging.NullHandler) for h in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


def report_handler_error(failure: HandlerFailure) -> None:
    """The default ``on_handler_error``: make a handler's exception visible here.

    If the application configured logging (``logging.basicConfig()``, Django's or
    Flask's logging, a handler on the ``"peernet"`` logger), the failure is logged
    once at ERROR on ``peernet.handlers`` with its traceback. Otherwise it is printed
    to ``sys.stderr`` with the handler's name, the peer's short id and the
    traceback, as ``threading.excepthook`` prints an uncaught exception (control and
    bidi characters escaped: the message may quote what the peer sent). A result that
    cannot be sent is shown as one line, without a traceback: the handler returned, so
    its own code is not in one.
    """
    exc = failure.exception
    if failure.in_result:
        what = f"{type(exc).__name__}: {escape(str(exc))}"
        if _logging_configured(log):
            log.error("handler %r returned a result for %s that cannot be sent: %s",
                      failure.handler, failure.peer.short, what)
            return
        text = (f"peernet: handler {failure.handler!r} returned a result that cannot be "
                f"sent (call from {failure.peer.short}): {what}\n")
    else:
        where = "authorize of handler" if failure.in_authorize else "handler"
        if _logging_configured(log):
            log.error("%s %r raised for %s", where, failure.handler, failure.peer.short,
                      exc_info=(type(exc), exc, exc.__traceback__))
            return
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
        # The message may quote the peer's args: no escape sequence reaches the terminal.
        text = (f"peernet: exception in {where} {failure.handler!r} "
                f"(call from {failure.peer.short}):\n" + escape_lines("".join(lines)))
    stream = sys.stderr
    if stream is None:  # pythonw, or a daemon that closed it
        return
    stream.write(text)
    stream.flush()


def check_handler_signature(name: str, fn: Callable[..., Any]) -> None:
    """Refuse, at ``expose()`` time, a handler that cannot be called as ``fn(peer, args)``.

    Without this, the mistake shows only when a peer calls: as ``RemoteError:
    TypeError`` on the caller. Callables whose signature Python cannot read are let
    through.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None, None)
    except TypeError as exc:
        shown = getattr(fn, "__qualname__", None) or type(fn).__name__
        raise TypeError(
            f"handler {name!r}: {shown}{signature} cannot be called as fn(peer, args) "
            f"({exc}); a handler takes the calling peer's PeerId and the call's args, "
            f"e.g. def {name.replace('.', '_').replace(':', '_').replace('-', '_')}"
            f"(peer, args): ..."
        ) from None


#: Handler names starting with this (any case) belong to peernet's built-in handlers,
#: such as the handler directory ``peernet.directory``. They are valid on the wire
#: (so peers can call them) but ``expose()`` refuses them, so no application handler
#: can stand in for one.
RESERVED_PREFIX = "peernet."


def is_reserved(name: str) -> bool:
    """True for a name in the reserved ``peernet.`` namespace (compared case-insensitively)."""
    return name[:len(RESERVED_PREFIX)].lower() == RESERVED_PREFIX


_NO_SUCH_HANDLER = Outcome(error=NO_SUCH_HANDLER)
_FORBIDDEN = Outcome(error=FORBIDDEN)


#: Names that passed :func:`check_handler_name` lately: a program calls a few names
#: over and over. Emptied when full (atomic, so safe between threads).
_CHECKED_NAMES: set[str] = set()
_CHECKED_NAMES_SIZE = 1024


def check_handler_name(name: object) -> str:
    """Return ``name`` if it is a valid handler name, else raise InvalidHandlerName."""
    if type(name) is str and name in _CHECKED_NAMES:
        return name
    if type(name) is not str or not is_valid_handler_name(name):
        raise InvalidHandlerName(
            f"handler names are 1-64 characters, start with a letter and use only "
            f"letters, digits and _ . : - ; got {name!r:.80}"
        )
    if len(_CHECKED_NAMES) >= _CHECKED_NAMES_SIZE:
        _CHECKED_NAMES.clear()
    _CHECKED_NAMES.add(name)
    return name


class HandlerTable:
    """Thread-safe map of exposed handlers. Lookups take no lock.

    ``on_error(failure)`` is told of every exception a handler raises (see
    :func:`report_handler_error`, the default).
    """

    def __init__(self, on_error: Callable[[HandlerFailure], None] = report_handler_error
                 ) -> None:
        self._handlers: dict[str, Handler] = {}
        self._builtins: dict[str, Handler] = {}  # reserved names, served after a miss
        self._lock = threading.Lock()
        self._on_error = on_error

    @overload
    def expose(self, name: str, fn: F, *, authorize: AuthorizeFn | None = None) -> F: ...
    @overload
    def expose(
        self, name: str, fn: None = None, *, authorize: AuthorizeFn | None = None
    ) -> Callable[[F], F]: ...

    def expose(self, name, fn=None, *, authorize=None):
        """Expose ``fn(peer, args) -> result`` under ``name``; replaces an earlier one.

        Without ``fn`` it returns a decorator. ``authorize(peer) -> bool`` gates every
        call; only ``True`` allows it. Names in the reserved ``peernet.`` namespace
        raise InvalidHandlerName.
        """
        check_handler_name(name)
        if is_reserved(name):
            raise InvalidHandlerName(
                f"handler names starting with {RESERVED_PREFIX!r} are reserved for "
                f"peernet's built-in handlers; choose another name than {name!r}")
        if authorize is not None and not callable(authorize):
            raise TypeError(f"authorize must be callable, got {type(authorize).__name__}")
        if fn is None:

            def decorator(f: F) -> F:
                self.expose(name, f, authorize=authorize)
                return f

            return decorator
        if not callable(fn):
            raise TypeError(f"handler must be callable, got {type(fn).__name__}")
        check_handler_signature(name, fn)
        with self._lock:
            self._handlers[name] = Handler(name, fn, authorize)
        return fn

    def revoke(self, name: str) -> bool:
        """Stop exposing ``name``. Returns whether it was exposed."""
        with self._lock:
            return self._handlers.pop(name, None) is not None

    def install_builtin(self, name: str, fn: HandlerFn) -> None:
        """Serve peernet's own handler ``fn`` under the reserved ``name`` (behind the
        handshake like any other; never listed by :meth:`names`)."""
        if not is_reserved(check_handler_name(name)):
            raise ValueError(f"built-in handler names start with {RESERVED_PREFIX!r}")
        with self._lock:
            self._builtins[name] = Handler(name, fn, None)

    def snapshot(self) -> list[Handler]:
        """The exposed (application) handlers, sorted by name."""
        with self._lock:
            handlers = list(self._handlers.values())
        return sorted(handlers, key=lambda h: h.name)

    def authorized(self, handler: Handler, peer: PeerId) -> bool:
        """Whether ``handler``'s ``authorize`` lets ``peer`` call it (a raising one
        does not, and is reported like in :meth:`dispatch`)."""
        if handler.authorize is None:
            return True
        try:
            return handler.authorize(peer) is True
        except BaseException as exc:  # noqa: BLE001 -- a broken policy denies
            self._report(HandlerFailure(handler.name, peer, exc, in_authorize=True))
            return False

    def names(self) -> list[str]:
        """The exposed handler names, sorted (built-in ones are not listed)."""
        return sorted(self._handlers)

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def __len__(self) -> int:
        return len(self._handlers)

    def dispatch(self, peer: PeerId, name: str, args: Any) -> Outcome:
        """Run one call from ``peer`` and say how it went. Never raises."""
        handler = self._handlers.get(name)
        if handler is None:
            handler = self._builtins.get(name)
            if handler is None:
                return _NO_SUCH_HANDLER
        if handler.authorize is not None:
            try:
                allowed = handler.authorize(peer)
            except BaseException as exc:  # noqa: BLE001 -- a broken policy denies
                self._report(HandlerFailure(name, peer, exc, in_authorize=True))
                return _FORBIDDEN
            if allowed is not True:
                return _FORBIDDEN
        try:
            return Outcome(handler.fn(peer, args))
        except Forbidden as exc:  # its text may quote the peer's args: escaped
            log.info("handler %r refused a call from %s: %s", name, peer.short, escape(str(exc)))
            return _FORBIDDEN
        except NoSuchHandler as exc:
            log.info("handler %r found nothing for %s: %s", name, peer.short, escape(str(exc)))
            return _NO_SUCH_HANDLER
        except BaseException as exc:  # noqa: BLE001 -- see module docstring
            self._report(HandlerFailure(name, peer, exc))
            return Outcome(error=HANDLER_ERROR, detail=exception_detail(exc))

    def report_unsendable(self, peer: PeerId, name: str, exc: BaseException) -> None:
        """Handler ``name`` answered ``peer`` with a result that cannot be sent (``exc``
        says why): reported to ``on_error`` like an exception it raised."""
        self._report(HandlerFailure(name, peer, exc, in_result=True))

    def _report(self, failure: HandlerFailure) -> None:
        try:
            self._on_error(failure)
        except BaseException:  # noqa: BLE001 -- a broken hook must not break serving
            log.error("on_handler_error raised while reporting handler %r", failure.handler,
                      exc_info=True)
