"""The layers of the code and the size of its modules, read from the source with ``ast`` (nothing imported).

Three layers, each importing only those below it:

1. **core**: every module under ``memsession/`` except ``memsession/service/``
   and ``memsession/__main__.py``: cache, session, wire, bus, hub, the
   ``SessionCache`` facade, the web integrations in ``contrib/``. It never
   imports ``persist`` nor ``memsession.service``.
2. **persistence**: every module under ``persist/``. It may import core, but
   never ``memsession.service`` nor ``memsession.contrib``.
3. **composition**: ``memsession/service/`` (sidecar, acknowledgements, HTTP
   status, gunicorn/uvicorn wiring, the command line) and
   ``memsession/__main__.py``. It may import everything.

Every ``import`` counts wherever it stands (module level, in a function, under
``if TYPE_CHECKING:``): a deferred import is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("memsession", "persist")
MAX_LINES = 420

CORE = "core"
PERSISTENCE = "persistence"
COMPOSITION = "composition"

#: Where each top-level place under memsession/ belongs. Plain modules directly under
#: memsession/ are core; every sub-package (and ``__main__``) must be named here, so a
#: new one is placed on purpose. bus, hub and wire may be modules or packages.
MEMSESSION_PLACES = {
    "bus": CORE,
    "contrib": CORE,
    "hub": CORE,
    "wire": CORE,
    "service": COMPOSITION,
    "__main__": COMPOSITION,
}

#: Module prefixes each layer must not import (a prefix covers its submodules).
FORBIDDEN = {
    CORE: ("persist", "memsession.service"),
    PERSISTENCE: ("memsession.service", "memsession.contrib"),
    COMPOSITION: (),
}


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool

    @property
    def relpath(self) -> str:
        return self.path.relative_to(ROOT).as_posix()


@dataclass(frozen=True)
class Edge:
    line: int
    target: str
    relative: bool


def discover(root: Path = ROOT) -> dict[str, Module]:
    """Every module of the packages, by dotted name."""
    modules: dict[str, Module] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            name = ".".join(parts)
            modules[name] = Module(name, path, is_package)
    return modules


def resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module a ``from`` import names, as the import system would resolve it."""
    if level == 0:
        if not name:
            raise ValueError("an absolute from-import needs a module name")
        return name
    package = module if is_package else module.rpartition(".")[0]
    bits = package.rsplit(".", level - 1)
    if not package or len(bits) < level:
        raise ValueError(f"{'.' * level}{name or ''} in {module} goes beyond the top-level package")
    base = bits[0]
    return f"{base}.{name}" if name else base


def imports(source: str, module: str, is_package: bool, known: AbstractSet[str] = frozenset()) -> list[Edge]:
    """Every module ``source`` imports, anywhere in it.

    ``from X import n`` imports ``X.n`` when that is a module (in ``known``, or
    a package the layer rules name), otherwise ``X`` itself.
    """
    named = {prefix for prefixes in FORBIDDEN.values() for prefix in prefixes}
    edges: list[Edge] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            edges.extend(Edge(node.lineno, alias.name, False) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = resolve(module, is_package, node.level, node.module)
            relative = node.level > 0
            targets = []
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                targets.append(candidate if candidate in known or candidate in named else base)
            edges.extend(Edge(node.lineno, target, relative) for target in dict.fromkeys(targets))
    return sorted(edges, key=lambda edge: (edge.line, edge.target))


def layer_of(module: Module) -> str:
    top, _, rest = module.name.partition(".")
    if top == "persist":
        return PERSISTENCE
    if top != "memsession":
        raise KeyError(module.name)
    if not rest:
        return CORE
    place = rest.split(".", 1)[0]
    if place in MEMSESSION_PLACES:
        return MEMSESSION_PLACES[place]
    if "." not in rest and not module.is_package:
        return CORE
    raise KeyError(f"{module.relpath}: memsession.{place} is not placed in MEMSESSION_PLACES")


def _under(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def _graph() -> list[tuple[Module, Edge]]:
    modules = discover()
    known = set(modules)
    return [
        (module, edge)
        for module in modules.values()
        for edge in imports(module.path.read_text(encoding="utf-8"), module.name, module.is_package, known)
    ]


# -- the resolver and the walk, on sources written here ------------------------------------------


@pytest.mark.parametrize(
    ("module", "is_package", "level", "name", "expected"),
    [
        ("memsession.bus", True, 1, "zmq", "memsession.bus.zmq"),  # bus/__init__.py: from .zmq import
        ("memsession.bus", True, 2, None, "memsession"),  # bus/__init__.py: from .. import wire
        ("memsession.bus", True, 2, "clock", "memsession.clock"),
        ("memsession.bus.base", False, 1, None, "memsession.bus"),  # bus/base.py: from . import sequence
        ("memsession.bus.base", False, 1, "sequence", "memsession.bus.sequence"),
        ("memsession.bus.base", False, 2, "clock", "memsession.clock"),
        ("persist.sidecar", False, 1, "base", "persist.base"),
        ("persist", True, 1, "writer", "persist.writer"),  # persist/__init__.py
        ("memsession.service.http", False, 2, "hub", "memsession.hub"),
        ("memsession.service.http", False, 0, "persist.base", "persist.base"),
    ],
)
def test_resolve(module: str, is_package: bool, level: int, name: str | None, expected: str) -> None:
    assert resolve(module, is_package, level, name) == expected


@pytest.mark.parametrize(
    ("module", "is_package", "level"),
    [("memsession.cache", False, 2), ("persist", True, 2), ("persist.url", False, 2)],
)
def test_resolve_refuses_to_climb_out_of_the_top_package(module: str, is_package: bool, level: int) -> None:
    with pytest.raises(ValueError, match="beyond the top-level package"):
        resolve(module, is_package, level, "x")


def test_imports_are_found_wherever_they_stand() -> None:
    source = (
        "from __future__ import annotations\n"            # 1
        "import os, persist.url\n"                        # 2
        "from typing import TYPE_CHECKING\n"              # 3
        "from . import sequence, zmq\n"                   # 4
        "from .. import wire\n"                           # 5
        "if TYPE_CHECKING:\n"                             # 6
        "    from persist.base import Store\n"            # 7
        "def later():\n"                                  # 8
        "    from ..service import cli\n"                 # 9
        "class C:\n"                                      # 10
        "    def m(self):\n"                              # 11
        "        try:\n"                                  # 12
        "            import memsession.contrib.flask\n"   # 13
        "        except ImportError:\n"                   # 14
        "            from ..hub import HubConfig\n"       # 15
    )
    known = {"memsession.bus.sequence", "memsession.bus.zmq", "memsession.wire", "memsession.hub"}
    found = [(e.line, e.target, e.relative) for e in imports(source, "memsession.bus.base", False, known)]
    assert found == [
        (1, "__future__", False),
        (2, "os", False),
        (2, "persist.url", False),
        (3, "typing", False),
        (4, "memsession.bus.sequence", True),
        (4, "memsession.bus.zmq", True),
        (5, "memsession.wire", True),
        (7, "persist.base", False),
        (9, "memsession.service", True),
        (13, "memsession.contrib.flask", False),
        (15, "memsession.hub", True),
    ]


def test_the_walk_resolves_the_real_tree_to_real_modules() -> None:
    """Relative and internal imports of the real tree all name modules that exist (and there are many)."""
    known = set(discover())
    internal = [(m, e) for m, e in _graph() if e.target.split(".", 1)[0] in PACKAGES]
    assert sum(e.relative for _, e in internal) >= 50
    assert {e.target.split(".", 1)[0] for _, e in internal} == set(PACKAGES)
    dangling = [f"{m.relpath}:{e.line} -> {e.target}" for m, e in internal if e.target not in known]
    assert not dangling, "imports of modules that do not exist:\n" + "\n".join(dangling)


# -- the rules, on the real tree ---------------------------------------------------------------------


def test_every_module_has_a_layer() -> None:
    modules = discover()
    assert {"memsession", "persist", "memsession.session", "persist.base"} <= set(modules)
    unplaced = []
    for module in modules.values():
        try:
            layer_of(module)
        except KeyError as exc:
            unplaced.append(exc.args[0])
    subpackages = {p.name for p in (ROOT / "memsession").iterdir() if p.is_dir() and any(p.rglob("*.py"))}
    unplaced += [f"memsession/{name}/ is not placed in MEMSESSION_PLACES"
                 for name in sorted(subpackages - set(MEMSESSION_PLACES))]
    assert not unplaced, "\n".join(unplaced)


def test_no_layer_imports_what_it_must_not() -> None:
    offenders = []
    for module, edge in sorted(_graph(), key=lambda pair: (pair[0].relpath, pair[1].line)):
        layer = layer_of(module)
        for prefix in FORBIDDEN[layer]:
            if _under(edge.target, prefix):
                offenders.append(
                    f"{module.relpath}:{edge.line} -> {edge.target} ({layer} must not import {prefix})"
                )
    assert not offenders, f"{len(offenders)} forbidden imports:\n" + "\n".join(offenders)


def test_no_module_is_longer_than_the_limit() -> None:
    lengths = {m.relpath: len(m.path.read_text(encoding="utf-8").splitlines()) for m in discover().values()}
    too_long = sorted((n, path) for path, n in lengths.items() if n > MAX_LINES)
    assert not too_long, f"modules over {MAX_LINES} lines:\n" + "\n".join(
        f"{path}: {n} lines" for n, path in reversed(too_long)
    )
