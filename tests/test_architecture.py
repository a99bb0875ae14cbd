"""The package's shape, checked: no import cycles (function-local imports included), no private name imported
from another module, no module over 500 lines, no side caches beside the store."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "probekit"
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(SRC.rglob("*.py")):
        rel = p.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import in the file, at any depth."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("probekit"):
                    out.append((a.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("probekit"):
                continue
            names = [a.name for a in node.names]
            # `from . import x` may name a submodule
            subs = [f"{mod}.{n}" for n in names if f"{mod}.{n}" in modules]
            out += [(s, [], node.lineno) for s in subs]
            out.append((mod, [n for n in names if f"{mod}.{n}" not in modules], node.lineno))
    return out


def _graph():
    modules = _modules()
    graph = {m: set() for m in modules}
    for m, p in modules.items():
        for target, _, _ in _imports(m, p, modules):
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != m and not m.startswith(target + "."):
                graph[m].add(target)
    return graph


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_name_is_imported_from_another_module():
    modules = _modules()
    bad = []
    for m, p in modules.items():
        for target, names, line in _imports(m, p, modules):
            bad += [f"{p.relative_to(SRC.parent)}:{line} imports {n} from {target}" for n in names
                    if n.startswith("_") and not n.startswith("__")]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_is_over_500_lines(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(SRC.parent)} has {n} lines"


def test_no_side_cache_beside_the_store():
    offenders = [str(p.relative_to(SRC.parent)) for p in SRC.rglob("*.py")
                 if any(s in p.read_text() for s in ("np.savez", "np.save(", "np.load(", "pickle.dump"))]
    assert not offenders, offenders
