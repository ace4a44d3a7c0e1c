"""imgstor's imports point down its layers and never go round a circle (docs/DESIGN.md,
"Layers").  Every import statement counts: at module level, inside a function, under
``TYPE_CHECKING``.  Importing ``a.b.c`` from outside package ``a.b`` runs ``a/b/__init__.py``
first, so that is an edge too.  Imports by name at run time (``importlib``) are not seen:
the command table of cli.py (down, by construction), the target drivers of
remote/targets (inside their own package) and workflows/storagemap's lazy commands (its
``__getattr__``; the same imports under ``TYPE_CHECKING`` are seen) are the only ones.

A new module must be placed in ``LAYERS``; a failure names each edge as
``importer:line -> imported``."""
from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "imgstor"

# Top to bottom: a module imports modules of its own layer or of a lower one.  "node" and
# "shared" layers are the code shipped to nodes (imgstor/remote/**, errors.py, __init__.py):
# they import nothing else, and the frontend imports no node layer, only the shared one.
LAYERS: list[tuple[str, str, list[str]]] = [
    ("entry points", "frontend", ["imgstor.__main__", "imgstor.onefile"]),
    ("command line", "frontend", ["imgstor.cli", "imgstor.admin", "imgstor.batch",
                                  "imgstor.clihelp", "imgstor.docgen"]),
    ("workflows", "frontend", ["imgstor.workflows", "imgstor.workflows.*"]),
    ("jobs, reconcile, credentials", "frontend",
     ["imgstor.jobs", "imgstor.jobpool", "imgstor.jobrun", "imgstor.reconcile",
      "imgstor.metrics", "imgstor.synctrust", "imgstor.chap", "imgstor.names"]),
    ("state, config, transport", "frontend",
     ["imgstor.state", "imgstor.state.*", "imgstor.config", "imgstor.tomlcache",
      "imgstor.transport", "imgstor.connections", "imgstor.hostkeys", "imgstor.zipapp"]),
    ("frontend base", "frontend",
     ["imgstor.atomicfile", "imgstor.validate", "imgstor.output", "imgstor.sched",
      "imgstor.faults", "imgstor.log", "imgstor.audit", "imgstor.exitcodes"]),
    ("node entry", "node", ["imgstor.remote.__main__", "imgstor.remote.node"]),
    ("node steps", "node", ["imgstor.remote.steps", "imgstor.remote.steps.*"]),
    ("node drivers: targets, overlays, VM runners", "node",
     ["imgstor.remote.targets", "imgstor.remote.targets.*", "imgstor.remote.overlays",
      "imgstor.remote.overlays.*", "imgstor.remote.vmrunners", "imgstor.remote.vmrunners.*"]),
    ("node services", "node",
     ["imgstor.remote.util", "imgstor.remote.executor", "imgstor.remote.locks",
      "imgstor.remote.jobs", "imgstor.remote.copyjob", "imgstor.remote.copypipe",
      "imgstor.remote.syncgate"]),
    ("tool drivers", "node", ["imgstor.remote.drivers", "imgstor.remote.drivers.*"]),
    ("shared with the node", "shared",
     ["imgstor.remote.protocol", "imgstor.remote.naming", "imgstor.remote.atomicfile",
      "imgstor.remote.procfs", "imgstor.remote.flocks", "imgstor.remote", "imgstor.errors",
      "imgstor"]),
]


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def _known(name: str, mods: dict[str, Path]) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def edges(mods: dict[str, Path]) -> dict[tuple[str, str], int]:
    """(importer, imported) -> the line of its first import, for imports inside imgstor."""
    out: dict[tuple[str, str], int] = {}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                    base_name = ".".join(base + ([node.module] if node.module else []))
                else:
                    base_name = node.module or ""
                names = [f"{base_name}.{a.name}" if f"{base_name}.{a.name}" in mods
                         else base_name for a in node.names]
            else:
                continue
            for name in names:
                target = _known(name, mods)
                if target is None:
                    continue
                if target != mod:
                    out.setdefault((mod, target), node.lineno)
                # importing a.b.c runs the __init__ of every package on the way that the
                # importer is not inside already
                chain = target.split(".")
                for i in range(1, len(chain)):
                    t = ".".join(chain[:i])
                    if not (mod + ".").startswith(t + "."):
                        out.setdefault((mod, t), node.lineno)
    return out


def layer_of(mod: str) -> int:
    found = [i for i, (_, _, pats) in enumerate(LAYERS)
             if any(fnmatch.fnmatchcase(mod, p) for p in pats)]
    assert len(found) == 1, f"{mod} is in {len(found)} layers of LAYERS: place it in one"
    return found[0]


def circles(mods: dict[str, Path], graph: dict[tuple[str, str], int]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    succ: dict[str, list[str]] = {m: [] for m in mods}
    for a, b in graph:
        succ[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in mods:
        if m not in index:
            visit(m)
    return out


def _where(mods: dict[str, Path], a: str, line: int) -> str:
    return f"{mods[a].relative_to(ROOT)}:{line}"


def test_every_module_has_one_layer() -> None:
    for m in modules():
        layer_of(m)


def test_no_import_circle() -> None:
    mods = modules()
    graph = edges(mods)
    found = circles(mods, graph)
    report = [" ".join(sorted(f"{_where(mods, a, ln)} -> {b}" for (a, b), ln in graph.items()
                              if a in c and b in c)) for c in found]
    assert found == [], f"{len(found)} import circle(s), their edges:\n" + "\n".join(report)


def test_imports_point_down_the_layers() -> None:
    mods = modules()
    bad = []
    for (a, b), line in sorted(edge for edge in edges(mods).items()):
        la, lb = layer_of(a), layer_of(b)
        if lb < la:
            bad.append(f"{_where(mods, a, line)} -> {b}: up from {LAYERS[la][0]!r} "
                       f"to {LAYERS[lb][0]!r}")
        elif LAYERS[la][1] == "frontend" and LAYERS[lb][1] == "node":
            bad.append(f"{_where(mods, a, line)} -> {b}: the frontend imports node code "
                       f"({LAYERS[lb][0]!r}); only the shared layer is both sides'")
    assert bad == [], f"{len(bad)} upward import(s):\n" + "\n".join(bad)


def test_the_checker_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    """The walk itself: an import inside a function is an edge, a relative one resolves,
    a submodule from outside its package runs the package; a circle is found."""
    mods = {"p": tmp_path / "p" / "__init__.py", "p.a": tmp_path / "p" / "a.py",
            "p.b": tmp_path / "p" / "b.py", "p.q": tmp_path / "p" / "q" / "__init__.py",
            "p.q.c": tmp_path / "p" / "q" / "c.py"}
    for m, p in mods.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("")
    mods["p.a"].write_text("import os\n\ndef f():\n    from p import b\n")
    mods["p"].write_text("from p.q import c\n")
    mods["p.b"].write_text("from .q.c import x\n")
    mods["p.q.c"].write_text("from .. import a\n")
    graph = edges(mods)
    assert set(graph) == {("p.a", "p.b"), ("p.b", "p.q"), ("p.b", "p.q.c"), ("p.q.c", "p.a"),
                          ("p", "p.q"), ("p", "p.q.c")}
    assert graph[("p.a", "p.b")] == 4
    assert circles(mods, graph) == [["p.a", "p.b", "p.q.c"]]
