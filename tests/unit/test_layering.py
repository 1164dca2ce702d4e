"""The protocol core (peernet/_proto) is sans-IO: no sockets, threads, clocks or event
loops, and nothing from the I/O layer above it. Checked on the source with ``ast``, so
an import hidden in a function body or an ``if`` counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import peernet

PACKAGE_DIR = Path(peernet.__file__).resolve().parent
PROTO_DIR = PACKAGE_DIR / "_proto"

FORBIDDEN_STDLIB = {"socket", "threading", "time", "select", "selectors", "asyncio"}
FORBIDDEN_PEERNET = ("peernet._io", "peernet.node")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Absolute names of every module ``source`` imports, anywhere in its AST.

    ``from X import y`` yields both ``X`` and ``X.y`` (``y`` may be a submodule).
    """
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: -(node.level - 1)]
                base = ".".join(base_parts)
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            for alias in node.names:
                if alias.name != "*":
                    found.add(f"{target}.{alias.name}")
        elif isinstance(node, ast.Call):
            # __import__("x") / importlib.import_module("x") with a literal name.
            func = node.func
            name = func.id if isinstance(func, ast.Name) else (
                func.attr if isinstance(func, ast.Attribute) else None)
            if name in {"__import__", "import_module"} and node.args and isinstance(
                    node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def violations(imports: set[str]) -> list[str]:
    bad = []
    for name in sorted(imports):
        if name.split(".")[0] in FORBIDDEN_STDLIB:
            bad.append(name)
        elif any(name == p or name.startswith(p + ".") for p in FORBIDDEN_PEERNET):
            bad.append(name)
    return bad


PROTO_FILES = sorted(PROTO_DIR.glob("*.py"))


def test_the_core_has_the_expected_modules():
    names = {p.stem for p in PROTO_FILES}
    assert {"__init__", "framing", "noise", "session", "messages", "cbor"} <= names


@pytest.mark.parametrize("path", PROTO_FILES, ids=lambda p: p.name)
def test_proto_module_imports_no_io(path):
    imports = imported_modules(path.read_text(encoding="utf-8"), module_name(path),
                               path.name == "__init__.py")
    assert violations(imports) == [], f"{path.name} imports I/O modules"


def _peernet_file(module: str) -> Path | None:
    rel = Path(*module.split(".")[1:])
    for candidate in (PACKAGE_DIR / rel.with_suffix(".py"), PACKAGE_DIR / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_peernet_modules_the_core_depends_on_stay_below_the_io_layer():
    """Follow peernet-internal imports from _proto (package ``__init__`` files aside):
    the closure must not reach peernet._io or peernet.node."""
    seen: dict[str, set[str]] = {}
    todo = [module_name(p) for p in PROTO_FILES]
    while todo:
        mod = todo.pop()
        if mod in seen or not mod.startswith("peernet."):
            continue
        path = _peernet_file(mod)
        if path is None:  # "from X import name" where name is not a module
            continue
        imports = imported_modules(path.read_text(encoding="utf-8"), mod,
                                   path.name == "__init__.py")
        seen[mod] = imports
        todo += [m for m in imports if m.startswith("peernet.")]
    assert "peernet._proto.session" in seen and "peernet._proto.keys" in seen
    leaks = {mod: bad for mod, imps in seen.items()
             if (bad := [m for m in violations(imps) if m.startswith("peernet")])}
    assert leaks == {}


# The checker itself must be able to fail.
@pytest.mark.parametrize(
    "source",
    [
        "import socket",
        "import time as clock",
        "from threading import Lock",
        "import asyncio.events",
        "from selectors import DefaultSelector",
        "def f():\n    import select\n",
        "if False:\n    from time import monotonic\n",
        "from .._io import link",
        "from .. import node",
        "from ..node import Node",
        "import peernet._io.link",
        "from peernet import _io",
        "__import__('socket')",
        "import importlib\nimportlib.import_module('threading')",
    ],
)
def test_checker_catches_forbidden_imports(source):
    assert violations(imported_modules(source, "peernet._proto.fake", False))


@pytest.mark.parametrize(
    "source",
    ["import hashlib", "from ..errors import ProtocolError", "from .noise import TAG_LEN",
     "import struct", "from typing import Callable", "import timeit_like_name"],
)
def test_checker_allows_harmless_imports(source):
    assert violations(imported_modules(source, "peernet._proto.fake", False)) == []


# --- the layers above the core -------------------------------------------------------

PUBLIC_LAYER = ("peernet.node", "peernet.discovery", "peernet.peer", "peernet.trust",
                "peernet.handlers", "peernet.cli", "peernet.rpc", "peernet.identity")


def _runtime_imports(path: Path, module: str | None = None) -> set[str]:
    """:func:`imported_modules` minus what is imported only under ``if TYPE_CHECKING:``
    (``module``: judge the file as that module; default: where it is)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        for field in ("body", "orelse"):
            block = getattr(node, field, None)
            if isinstance(block, list):
                setattr(node, field, [
                    child for child in block
                    if not (isinstance(child, ast.If) and isinstance(child.test, ast.Name)
                            and child.test.id == "TYPE_CHECKING")])
    return imported_modules(ast.unparse(tree), module or module_name(path),
                            path.name == "__init__.py")


ALL_FILES = sorted(PACKAGE_DIR.rglob("*.py"))


@pytest.mark.parametrize("path", sorted((PACKAGE_DIR / "_io").glob("*.py")),
                         ids=lambda p: p.name)
def test_the_edge_imports_nothing_from_the_public_layer(path):
    imports = imported_modules(path.read_text(encoding="utf-8"), module_name(path),
                               path.name == "__init__.py")
    upward = [m for m in imports if any(m == p or m.startswith(p + ".") for p in PUBLIC_LAYER)]
    assert upward == [], f"_io/{path.name} imports {upward}"


# Every layer may import its own modules, the layers below it, and the vocabulary:
# leaf modules of values and errors that import nothing but each other.
VOCABULARY = ("peernet.errors", "peernet.ids", "peernet._text", "peernet.peer",
              "peernet._version")
FILES = ("peernet._fs", "peernet._addresses")  # the data dir's files, for the edge
LAYERS = {  # layer: what its modules may import besides the vocabulary
    "peernet._proto": ("peernet._proto",),
    "peernet._io": ("peernet._io", "peernet._proto", *FILES),
    "peernet.discovery": ("peernet.discovery", "peernet._io", "peernet._proto"),
}


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _upward(path: Path, allowed: tuple[str, ...], module: str | None = None) -> list[str]:
    """The peernet modules ``path`` imports at run time beyond ``allowed`` and the
    vocabulary (``from . import x`` names the package itself too: that is not counted)."""
    return sorted(m for m in _runtime_imports(path, module)
                  if m.startswith("peernet.") and not _within(m, (*allowed, *VOCABULARY)))


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_only_go_down_the_layers(layer):
    """guides/architecture.md's table, as an allow-list: a layer imports only itself,
    the layers below it and the vocabulary (so a new public module is above every
    layer without being listed anywhere). Imports only for type checking do not count."""
    directory = PACKAGE_DIR.joinpath(*layer.split(".")[1:])
    found = {path.name: bad for path in sorted(directory.glob("*.py"))
             if (bad := _upward(path, LAYERS[layer]))}
    assert found == {}


def test_the_vocabulary_is_made_of_leaves():
    for name in VOCABULARY + FILES:
        path = _peernet_file(name)
        assert path is not None, name
        allowed = FILES if name in FILES else ()
        assert _upward(path, allowed) == [], name


def test_the_layer_checker_can_fail(tmp_path):
    fake = tmp_path / "mesh.py"
    fake.write_text("from ..labels import resolve_peer\nfrom ..errors import PeerNetError\n"
                    "from .. import _fs\nfrom typing import TYPE_CHECKING\n"
                    "if TYPE_CHECKING:\n    from ..node import Node\n")
    assert _upward(fake, LAYERS["peernet._io"], "peernet._io.mesh") == [
        "peernet.labels", "peernet.labels.resolve_peer"]
    assert _upward(fake, LAYERS["peernet._proto"], "peernet._proto.mesh") == [
        "peernet._fs", "peernet.labels", "peernet.labels.resolve_peer"]


def test_the_core_reaches_no_file_storage():
    """Key math lives in _proto/keys.py: the core never reaches identity.py or _fs."""
    for path in PROTO_FILES:
        imports = imported_modules(path.read_text(encoding="utf-8"), module_name(path),
                                   path.name == "__init__.py")
        assert not {"peernet.identity", "peernet._fs"} & imports, path.name


def test_there_is_no_import_cycle():
    """Runtime imports between peernet's modules form no cycle. An import of a package
    (its ``__init__``) counts only from outside that package: inside, it re-exports."""
    modules = {module_name(p): p for p in ALL_FILES}
    packages = {module_name(p) for p in ALL_FILES if p.name == "__init__.py"}
    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        edges = set()
        for target in _runtime_imports(path):
            if target not in modules or target == mod:
                continue
            if target in packages and (mod + ".").startswith(target + "."):
                continue
            edges.add(target)
        graph[mod] = edges
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(mod: str) -> None:
        state[mod] = 1
        stack.append(mod)
        for nxt in graph[mod]:
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod)



# --- the registry runs no callback under its lock -------------------------------------


def callbacks_under_lock(source: str, lock: str = "_cond") -> list[str]:
    """Calls to a function's own parameters (callables passed in: callbacks) made inside
    ``with self.<lock>:`` in ``source``; a nested ``def`` is judged on its own."""
    found = []

    def visit(node: ast.AST, params: set[str], locked: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                args = child.args
                names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
                # A nested function still sees (and may call) the outer parameters.
                visit(child, params | names, False)
                continue
            holds = locked or (isinstance(child, ast.With) and any(
                ast.unparse(item.context_expr) == f"self.{lock}" for item in child.items))
            if (holds and isinstance(child, ast.Call) and isinstance(child.func, ast.Name)
                    and child.func.id in params):
                found.append(ast.unparse(child))
            visit(child, params, holds)

    visit(ast.parse(source), set(), False)
    return found


def test_the_registry_runs_no_callback_under_its_lock():
    """Callbacks into the mesh or the node run after the registry's lock is released
    (a dial is reserved under it, then built outside; a redial's delay is computed from
    the pure Backoff value, and the dial itself runs later on the timer thread)."""
    source = (PACKAGE_DIR / "_io" / "registry.py").read_text(encoding="utf-8")
    assert callbacks_under_lock(source) == []


def test_the_callback_checker_can_fail():
    old = ("class R:\n"
           "    def schedule(self, peer, delay_s, dial):\n"
           "        with self._cond:\n"
           "            delay = delay_s(1)\n"
           "            def fire():\n"
           "                with self._cond:\n"
           "                    pass\n"
           "                dial(peer)\n"
           "            def unsafe():\n"
           "                with self._cond:\n"
           "                    dial(peer)\n")
    assert callbacks_under_lock(old) == ["delay_s(1)", "dial(peer)"]


def test_node_is_a_facade_with_no_link_callbacks():
    """What links report goes to the mesh (the LinkOwner protocol); none of it is part of
    the user's Node, whose public names are its API."""
    from peernet import Node
    from peernet._io.link import LinkOwner
    from peernet._io.mesh import Mesh

    callbacks = {name for name in vars(LinkOwner) if not name.startswith("_")}
    assert callbacks and callbacks <= set(dir(Mesh))
    assert not callbacks & set(dir(Node))
    assert not any(name.startswith("link_") for name in dir(Node))


def test_importing_peernet_and_its_cli_does_not_import_asyncio():
    """The asyncio facade (node.acall, ...) imports asyncio when first used: a blocking
    script or a one-shot `peernet call` does not pay for it at start-up."""
    import subprocess
    import sys

    code = "import sys, peernet, peernet.cli; print(sorted(m for m in sys.modules if m == 'asyncio'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
