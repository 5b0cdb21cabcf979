"""The layer contract over the import graph of ``repulse/`` (docs/architecture.md, "Layers").

Every import between repulse modules - at module level or inside a function, except imports of
optional extras, which are not repulse modules - must point to the same floor or a lower one,
and no module may reach itself through imports (no circles). Parsed from the source (AST), so a
mention in a comment or a string does not count and a hidden import in a function does.
"""

from __future__ import annotations

import ast
from pathlib import Path

import repulse

ROOT = Path(repulse.__file__).parent

# floor of each top-level part of the package (lower floors never import higher ones)
FLOORS: dict[str, int] = {
    "errors": 0,
    "__init__": 0,
    "config": 1,
    "toy": 1,  # builds tiny assets from nothing: imports only errors
    "data": 2,
    "models": 2,
    "losses": 2,
    "engine": 3,
    "rl": 3,
    "evaluation": 3,
    "run": 4,
    "trainers": 5,
    "workflows": 6,
    "report": 6,
    "launch": 6,
    "cli": 7,
    "__main__": 7,
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path, module: str) -> set[str]:
    """The repulse modules ``path`` imports (resolving relative imports and ``from x import y``)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if n == "repulse" or n.startswith("repulse."))
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for mod, path in files.items():
        targets = set()
        for name in imports_of(path, mod):
            # ``from repulse.x import y``: y is a module when such a file exists, else a name in x
            while name not in files and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in files and name != mod:
                targets.add(name)
        edges[mod] = targets
    return edges


def test_every_part_has_a_floor():
    parts = {part_of(m) for m in graph()}
    assert parts <= set(FLOORS), sorted(parts - set(FLOORS))


def test_imports_point_down():
    bad = []
    for mod, targets in graph().items():
        for t in targets:
            if t == "repulse":
                continue
            if FLOORS[part_of(t)] > FLOORS[part_of(mod)]:
                bad.append(f"{mod} (floor {FLOORS[part_of(mod)]}) imports {t} (floor {FLOORS[part_of(t)]})")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_circles():
    edges = graph()
    # package __init__ re-exports are edges from a package to its own modules; a module importing
    # its own package's __init__ would close a trivial circle, which Python handles, so drop
    # edges into ancestors' __init__.
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if m.startswith(t + "."):
                continue
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t) :] + [t]))
            elif state.get(t) is None:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(cycles)


def test_the_contract_sees_a_violation(tmp_path):
    """The checker itself: an upward import written inside a function is found."""
    src = tmp_path / "x.py"
    src.write_text("def f():\n    from repulse.trainers import fit\n")
    assert "repulse.trainers.fit" in imports_of(src, "repulse.losses.x")
    src.write_text("# from repulse.trainers import fit\nX = 'import repulse.trainers'\n")
    assert imports_of(src, "repulse.losses.x") == set()
