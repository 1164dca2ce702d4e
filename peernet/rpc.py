"""Opt-in remote calls: let a peer run an explicit allow-list of your functions.

The callee lists exactly what a peer may run, by function object or ``"module:function"``
name, and serves it as one handler; the caller names a function and passes arguments::

    # callee
    import statistics
    from peernet import Node, rpc

    def greet(who: str, *, punct: str = "!") -> str:
        return f"hello {who}{punct}"

    node = Node(...)
    rpc.serve(node, [greet, "statistics:mean"], authorize=lambda peer: peer == alice)

    # caller (alice)
    rpc.call(node, bob, "__main__:greet", "alice", punct="?")   # -> "hello alice?"
    rpc.call(node, bob, "statistics:mean", [1, 2, 3], timeout=2.0)  # -> 2
    rpc.cast(node, bob, "__main__:greet", "alice")   # fire and forget -> bool
    rpc.call(node, bob, "os:system", "rm -rf ~")     # raises peernet.Forbidden

Rules, enforced on the callee:

* **Allow-list only.** Names are resolved once, when :func:`serve` (or :class:`Allowlist`)
  runs: a ``"module:function"`` string imports ``module`` and does one ``getattr`` of one
  identifier. At call time the name a peer sent is only looked up, exactly, in that
  table: never imported, never ``getattr``-ed, never split on dots. Anything else,
  including every dunder and private name and ``module:attr.sub`` traversal, is refused
  as :class:`~peernet.Forbidden` with no side effect.
* **Per-peer authorize.** ``authorize(peer) -> bool`` runs before every call (this is
  :meth:`Node.expose`'s ``authorize``: only ``True`` allows, raising means no).
* **Asymmetric.** Serving gives the *other* side nothing: a node can only run what its
  peer allow-listed, and its own allow-list is for peers calling it.
* **Data only.** Arguments and results are CBOR data (None, bool, int, float, str,
  bytes, list/tuple, dict with str keys). A result that is not raises
  :class:`~peernet.RemoteError` with ``type_name == "EncodeError"`` at the caller; the
  callee logs what was wrong and carries on. Bad arguments raise
  :class:`~peernet.EncodeError` at the caller before anything is sent.
* **Keyword arguments** must be ASCII identifiers that do not start with ``_``.
* An exception in the function reaches the caller as :class:`~peernet.RemoteError`
  carrying the exception's type name only (the traceback stays in the callee's log).

Names: a function object is listed as ``f"{fn.__module__}:{fn.__qualname__}"``, so it
must be a module-level function or class (no lambdas, nested functions or methods) whose
name does not start with ``_``. To list anything else -- a bound method, a
``functools.partial`` -- or to choose the name, pass a mapping
``{"calc:add": calculator.add}``. Functions of the script you run are ``"__main__:..."``.

``call()`` consumes the keywords ``timeout`` and ``handler`` itself (``node``, ``peer`` and
``name`` are positional-only, so those do reach the function); pass a parameter named
``timeout`` or ``handler`` positionally. ``cast()`` only consumes ``handler``.

Wire format (so other implementations can talk to it): an ordinary call of the handler
(``"rpc"``) whose ``args`` are ``[name, args_list, kwargs_map]``. The reply is the
function's result; a name not on the list or a malformed request is answered with the
``forbidden`` error code, exactly like a refused ``authorize``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .errors import Forbidden, NoSuchHandler
from .handlers import AuthorizeFn
from .ids import PeerId

if TYPE_CHECKING:  # a runtime import would tie this module to node.py's import order
    from .node import Node

__all__ = ["DEFAULT_HANDLER", "Allowlist", "call", "cast", "check_name", "serve"]

#: The handler name :func:`serve`, :func:`call` and :func:`cast` use unless told otherwise.
DEFAULT_HANDLER = "rpc"

_MAX_NAME = 200
# ASCII only: a dotted module path, one colon, one public identifier. No attribute paths
# after the colon, so a name can never mean "walk from this object to another".
_NAME_RE = re.compile(
    r"(?P<module>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)"
    r":(?P<function>[A-Za-z][A-Za-z0-9_]*)"
)
_KWARG_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

_NOT_ALLOWED = "not on the allow-list"
_MALFORMED = "malformed request: expected [name, args list, kwargs map]"
_BAD_KWARG = "keyword argument names must be identifiers that do not start with '_'"


def check_name(name: object) -> str:
    """Return ``name`` if it is a well-formed ``"module:function"`` name, else raise.

    Raises ``TypeError`` for a non-``str`` and ``ValueError`` for a malformed name:
    ASCII identifiers only, one colon, a plain (undotted) function name that does not
    start with ``_``, and no dunder module part other than ``__main__``.
    """
    if type(name) is not str:
        raise TypeError(f"an rpc name must be a str 'module:function', got {type(name).__name__}")
    match = _NAME_RE.fullmatch(name) if len(name) <= _MAX_NAME else None
    if match is None:
        raise ValueError(
            f"an rpc name is 'module:function' (a dotted module path, a colon, one "
            f"identifier not starting with '_'; no attribute paths), got {name!r:.100}"
        )
    for part in match["module"].split("."):
        if part.startswith("__") and part.endswith("__") and part != "__main__":
            raise ValueError(f"dunder module names are not allowed in rpc names: {name!r}")
    return name


def _check_kwargs(kwargs: Mapping[str, Any]) -> None:
    for key in kwargs:
        if type(key) is not str or _KWARG_RE.fullmatch(key) is None:
            raise ValueError(f"{_BAD_KWARG}; got {key!r:.80}")


def _name_of(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if type(module) is not str or type(qualname) is not str:
        raise ValueError(
            f"{fn!r:.80} has no module-level name; list it as {{'module:name': fn}}"
        )
    name = f"{module}:{qualname}"
    try:
        return check_name(name)
    except ValueError:
        raise ValueError(
            f"{name!r:.100} is not a public module-level function (lambdas, nested "
            f"functions, methods and names starting with '_' are not listed by object); "
            f"list it as {{'module:name': fn}} if you mean it"
        ) from None


def _resolve(name: str) -> Callable[..., Any]:
    """Import the module and fetch one attribute: set-up time, on the callee's own say."""
    module_name, _, attr = check_name(name).partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot allow {name!r}: module {module_name!r} cannot be "
                         f"imported ({exc})") from exc
    try:
        fn = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"cannot allow {name!r}: module {module_name!r} has no "
                         f"attribute {attr!r}") from None
    if not callable(fn):  # the name is what is wrong here, hence ValueError
        raise ValueError(  # noqa: TRY004
            f"cannot allow {name!r}: it is a {type(fn).__name__}, not callable")
    return fn


class Allowlist:
    """An immutable table ``"module:function" -> callable``, built and checked once.

    ``allow`` is an iterable of function objects and/or ``"module:function"`` strings, or
    a mapping from chosen names to callables. Raises ``TypeError``/``ValueError`` (with
    what to do instead) for anything that cannot be listed; see the module doc.
    """

    __slots__ = ("_fns",)

    def __init__(self, allow: Iterable[Callable[..., Any] | str]
                 | Mapping[str, Callable[..., Any]]) -> None:
        if isinstance(allow, (str, bytes)) or callable(allow):
            raise TypeError("allow must be a list of functions or 'module:function' "
                            f"strings (or a mapping), not a single {type(allow).__name__}")
        fns: dict[str, Callable[..., Any]] = {}
        if isinstance(allow, Mapping):
            entries = [(check_name(name), fn) for name, fn in allow.items()]
            for name, fn in entries:
                if not callable(fn):
                    raise TypeError(f"cannot allow {name!r}: it is a "
                                    f"{type(fn).__name__}, not callable")
        else:
            entries = []
            for item in allow:
                if type(item) is str:
                    entries.append((item, _resolve(item)))
                elif callable(item):
                    entries.append((_name_of(item), item))
                else:
                    raise TypeError(f"allow-list items are functions or 'module:function' "
                                    f"strings, got {type(item).__name__}")
        for name, fn in entries:
            if fns.setdefault(name, fn) is not fn:
                raise ValueError(f"two different callables are listed as {name!r}")
        self._fns: Mapping[str, Callable[..., Any]] = MappingProxyType(fns)

    @property
    def names(self) -> tuple[str, ...]:
        """The listed names, sorted."""
        return tuple(sorted(self._fns))

    def __contains__(self, name: object) -> bool:
        return type(name) is str and name in self._fns

    def __len__(self) -> int:
        return len(self._fns)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __repr__(self) -> str:
        return f"<rpc.Allowlist {list(self.names)!r}>"

    def handle(self, peer: PeerId, request: Any) -> Any:
        """Run an allow-listed function: args are [name, args list, kwargs map] (peernet.rpc).

        Only exact lookups in the table happen here. A name not on the list raises
        NoSuchHandler (the caller passed ``authorize``, so it may know what exists);
        a malformed request raises Forbidden. Exceptions the function raises propagate
        (the peer gets ``RemoteError``).
        """
        if type(request) is not list or len(request) != 3:
            return self._refuse(peer, None, _MALFORMED)
        name, args, kwargs = request
        if type(name) is not str:
            return self._refuse(peer, name, _MALFORMED)
        fn = self._fns.get(name)
        if fn is None:
            shown = name if len(name) <= 100 else name[:100] + "..."
            raise NoSuchHandler(f"rpc {shown!r} from {peer.short}: {_NOT_ALLOWED}")
        if type(args) is not list or type(kwargs) is not dict:
            return self._refuse(peer, name, _MALFORMED)
        if any(type(key) is not str or _KWARG_RE.fullmatch(key) is None for key in kwargs):
            return self._refuse(peer, name, _BAD_KWARG)
        return fn(*args, **kwargs)

    @staticmethod
    def _refuse(peer: PeerId, name: object, why: str) -> Any:
        shown = name if type(name) is str and len(name) <= 100 else type(name).__name__
        raise Forbidden(f"rpc {shown!r} from {peer.short}: {why}")


def serve(node: Node, allow: Allowlist | Iterable[Callable[..., Any] | str]
          | Mapping[str, Callable[..., Any]], *, authorize: AuthorizeFn | None = None,
          handler: str = DEFAULT_HANDLER) -> Allowlist:
    """Expose the functions in ``allow`` on ``node`` as the handler ``handler``.

    ``authorize(peer) -> bool`` runs before every call; only ``True`` allows it (None:
    every paired peer). Serving again under the same handler name replaces the earlier
    allow-list; ``node.revoke(handler)`` stops serving. Returns the :class:`Allowlist`.
    """
    table = allow if isinstance(allow, Allowlist) else Allowlist(allow)
    node.expose(handler, table.handle, authorize=authorize)
    return table


def _request(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    check_name(name)
    _check_kwargs(kwargs)
    return [name, list(args), kwargs]


def call(node: Node, peer: PeerId | str | bytes, name: str, /, *args: Any,
         timeout: float | None = None, handler: str = DEFAULT_HANDLER,
         **kwargs: Any) -> Any:
    """Run the allow-listed function ``name`` on ``peer`` (an id or a label) and
    return its result.

    Raises ``TypeError``/``ValueError`` for a malformed name or keyword, and
    :class:`~peernet.EncodeError` for non-CBOR arguments, before anything is sent;
    :class:`~peernet.Forbidden` if ``peer`` does not let you use its rpc;
    :class:`~peernet.NoSuchHandler` if it does, but ``name`` is not on its allow-list
    (a typo, say), or it serves no ``handler``;
    :class:`~peernet.RemoteError` if the function raised (``type_name`` says what) or
    its result is not CBOR data (``"EncodeError"``); and whatever
    :meth:`Node.call` raises (timeouts, unavailable peer...).
    """
    pid = node.resolve(peer)
    try:
        return node.call(pid, handler, _request(name, args, kwargs), timeout=timeout)
    except NoSuchHandler:
        raise NoSuchHandler(
            f"{pid.short}: no such function {name!r} (not on its rpc allow-list, or it "
            f"serves no {handler!r} handler)") from None


def cast(node: Node, peer: PeerId | str | bytes, name: str, /, *args: Any,
         handler: str = DEFAULT_HANDLER, **kwargs: Any) -> bool:
    """Fire and forget ``name(*args, **kwargs)`` on ``peer``.

    Returns True if handed to a live link, False if dropped (offline); a refusal or an
    exception on the peer is only logged there. Bad names and arguments raise here.
    """
    return node.send(node.resolve(peer), handler, _request(name, args, kwargs))
