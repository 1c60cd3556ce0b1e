"""The import graph: which package may import which, no cycles, no private names.

Reads every module's imports (those inside functions too) with `ast`, so an import
moved into a function to dodge a cycle is still an edge. docs/architecture.md draws
the same rules; a test keeps the drawing and the rules together."""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGES = ("store", "trust", "p2p", "erofs", "ondemand", "node", "sim")

# package -> the packages it may import (besides itself). store ← trust ← p2p ← node;
# erofs and ondemand stand alone; sim drives the node code and nothing imports sim.
LAYERS: dict[str, tuple[str, ...]] = {
    "store": (),
    "trust": ("store",),
    "p2p": ("store", "trust"),
    "erofs": (),
    "ondemand": (),
    "node": ("store", "trust", "p2p", "erofs", "ondemand"),
    "sim": ("store", "trust", "p2p", "node"),
}
# Inside node: the local store and the exchange are the bottom; the gateway app builds
# on the exchange; the daemon composes them; the CLI is the top, and only it talks to
# the user (nothing below may import it).
NODE_LAYERS: dict[str, tuple[str, ...]] = {
    "local": (),
    "exchange": ("local",),
    "gateway": ("exchange", "local"),
    "daemon": ("local", "exchange", "gateway"),
    "cli": ("local", "exchange", "gateway", "daemon"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(module: str, path: Path) -> Iterator[tuple[str, str | None]]:
    """(imported module, name taken from it or None) for every import in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield (full, None) if full in MODULES else (base, alias.name)


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for module, path in MODULES.items():
        for target, _ in _imports(module, path):
            if target.split(".")[0] in PACKAGES and target != module:
                edges[module].add(target)
    return edges


def _part(module: str) -> str:
    """node.daemon.node -> node.daemon; store.nar -> store."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "node" and len(parts) > 1 else parts[0]


def _allowed(source: str, target: str) -> bool:
    a, b = source.split(".")[0], target.split(".")[0]
    if a != b:
        return b in LAYERS[a]
    if a != "node":
        return True
    sa, sb = _part(source), _part(target)
    if sa == "node" or sb == "node" or sa == sb:  # the package itself, or within one part
        return True
    return sb.split(".")[1] in NODE_LAYERS[sa.split(".")[1]]


def test_every_import_follows_the_layers() -> None:
    wrong = sorted(
        f"{source} imports {target}"
        for source, targets in _graph().items()
        for target in targets
        if not _allowed(source, target)
    )
    assert not wrong, "\n".join(wrong)


def test_there_is_no_import_cycle() -> None:
    edges = _graph()
    # Tarjan's strongly connected components; any with two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in MODULES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    # A package's __init__ re-exporting its modules is not a cycle worth failing on;
    # ferry's __init__ files import nothing of their own package but node/cli's.
    assert not cycles, cycles


def test_no_module_imports_another_modules_private_names() -> None:
    wrong = sorted(
        f"{module} imports {name} from {target}"
        for module, path in MODULES.items()
        for target, name in _imports(module, path)
        if name is not None and name.startswith("_") and target.split(".")[0] in PACKAGES
    )
    assert not wrong, "\n".join(wrong)


def test_the_layers_are_drawn_in_docs_architecture() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for pkg, deps in {**LAYERS, **{f"node/{k}": v for k, v in NODE_LAYERS.items()}}.items():
        line = f"{pkg:<14} → {', '.join(deps) or '(nothing)'}"
        assert line in doc, f"docs/architecture.md should have the line: {line!r}"


def test_the_rules_bite() -> None:
    """The checks above would see the edges this refactoring removed."""
    assert not _allowed("node.daemon.node", "node.cli.source")
    assert not _allowed("node.exchange.fetch", "sim.store")
    assert not _allowed("store.nar", "trust.claim")
    assert not _allowed("erofs.writer", "store.nar")
    assert _allowed("sim.node", "node.exchange.fetch")
    assert _allowed("node.cli.netcmd", "node.daemon.control")
